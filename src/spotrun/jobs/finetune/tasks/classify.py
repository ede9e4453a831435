"""Text classification, the worked example of adding a task: which standard-library module does a
docstring come from? Labels are derived from the shipped pairs (the first dotted part of
`data.query_field`, e.g. "asyncio" for "asyncio.sleep(delay)"); the text is `data.doc_field`.

The model is `AutoModelForSequenceClassification` on `model.name` (a fresh head on the encoder).
Metric: accuracy on the first `data.eval_size` held-out pairs. final/ loads with
`AutoModelForSequenceClassification.from_pretrained` and carries the label names in its config.
"""

from __future__ import annotations

from collections import Counter

import torch

from spotrun.jobs.finetune.data import load_pairs
from spotrun.jobs.finetune.tasks import WholeModel

OTHER = "other"


def module_of(query: str) -> str:
    return query.split("(", 1)[0].split(".", 1)[0]


def label_names(queries: list[str], top_k: int) -> list[str]:
    """The `top_k` most common modules (ties by name: the same on every rank and launch), then "other"."""
    counts = Counter(module_of(q) for q in queries)
    return sorted(counts, key=lambda m: (-counts[m], m))[:top_k] + [OTHER]


class ClassifyTask(WholeModel):
    """Cross-entropy over module labels; accuracy; final/ is the whole classifier."""

    metrics = ("accuracy",)
    metric, mode = "accuracy", "max"
    sharded = False  # replicated (DDP)

    def __init__(self, cfg, model_path: str, repo_root: str, device: torch.device, top_k: int = 15):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.cfg, self.repo, self.device = cfg, repo_root, device
        queries, self.texts = load_pairs(cfg.data, repo_root, "train")
        self.names = label_names(queries, top_k)
        self.labels = self._label_ids(queries)
        self.tok = AutoTokenizer.from_pretrained(model_path)
        torch.manual_seed(cfg.seed)  # the new head's initial weights: the same on every rank and launch
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=len(self.names),
            id2label=dict(enumerate(self.names)),
            label2id={n: i for i, n in enumerate(self.names)},
        ).to(device)

    def _label_ids(self, queries: list[str]) -> torch.Tensor:
        index = {n: i for i, n in enumerate(self.names)}
        return torch.tensor([index.get(module_of(q), index[OTHER]) for q in queries])

    def _batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        L = self.cfg.data.max_length  # fixed shapes: every step costs the same
        b = self.tok(texts, padding="max_length", truncation=True, max_length=L, return_tensors="pt")
        return {k: v.to(self.device) for k, v in b.items()}

    def num_samples(self) -> int:
        return len(self.texts)

    def trainable_parameters(self):
        return self.model.parameters()

    def loss(self, model, ids) -> torch.Tensor:
        batch = self._batch([self.texts[i] for i in ids])
        return model(**batch, labels=self.labels[torch.as_tensor(ids)].to(self.device)).loss

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        queries, texts = load_pairs(self.cfg.data, self.repo, "eval")
        n = min(len(texts), self.cfg.data.eval_size)
        labels, bs = self._label_ids(queries[:n]), self.cfg.trainer.eval_batch_size
        was_training = self.model.training
        self.model.eval()
        hits = 0
        for i in range(0, n, bs):
            logits = self.model(**self._batch(texts[i : min(i + bs, n)])).logits
            hits += int((logits.argmax(-1).cpu() == labels[i : i + bs]).sum())
        self.model.train(was_training)
        return {"accuracy": hits / max(n, 1)}
