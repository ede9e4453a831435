"""The default task: a Hugging Face encoder fine-tuned as a bi-encoder on (query, doc) pairs."""

from __future__ import annotations

import torch

from spotrun.jobs.finetune.data import load_pairs
from spotrun.jobs.finetune.models import contrastive_loss, embed, load_encoder, recall_at_1
from spotrun.jobs.finetune.tasks import WholeModel


class EncoderTask(WholeModel):
    """In-batch-negatives contrastive loss; recall@1 on held-out pairs; final/ is the whole model."""

    metrics = ("recall_at_1",)
    metric, mode = "recall_at_1", "max"
    sharded = False  # always replicated (DDP)

    def __init__(self, cfg, model_path: str, repo_root: str, device: torch.device):
        self.cfg, self.repo, self.device = cfg, repo_root, device
        self.model, self.tok = load_encoder(model_path)
        self.model.to(device)
        self.queries, self.docs = load_pairs(cfg.data, repo_root, "train")

    def num_samples(self) -> int:
        return len(self.queries)

    def trainable_parameters(self):
        return self.model.parameters()

    def loss(self, model, ids) -> torch.Tensor:
        L = self.cfg.data.max_length

        def tok(texts):
            b = self.tok(texts, padding="max_length", truncation=True, max_length=L, return_tensors="pt")
            return {k: v.to(self.device) for k, v in b.items()}

        q = embed(model, tok([self.queries[i] for i in ids]), self.cfg.model.pooling)
        d = embed(model, tok([self.docs[i] for i in ids]), self.cfg.model.pooling)
        return contrastive_loss(q, d, self.cfg.model.scale)

    def evaluate(self) -> dict[str, float]:
        q, d = load_pairs(self.cfg.data, self.repo, "eval")
        n = min(len(q), self.cfg.data.eval_size)
        c = self.cfg
        r1 = recall_at_1(
            self.model,
            self.tok,
            q[:n],
            d[:n],
            c.data.max_length,
            c.trainer.eval_batch_size,
            c.model.pooling,
            self.device,
        )
        return {"recall_at_1": r1}
