"""The default task's model: a Hugging Face encoder trained as a bi-encoder with in-batch negatives.
Which model loads is spotrun.core.models' choice; here it is checked for the fine-tune's tasks."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from spotrun.core.errors import ConfigError
from spotrun.core.models import (  # noqa: F401 - part of the API
    defer_sklearn,
    existing_model_path,
    probe_model,
    resolve_model_path,
)


def check_model(model_cfg, task_cls: type | None = None):
    """(path, its transformers config): the model's config probed without loading weights; a
    one-line error if unusable, or if the task's own `check` refuses the model (e.g. LoRA targets
    the model lacks)."""
    from spotrun.jobs.finetune.llm import gguf_kwargs

    path, config = probe_model(model_cfg, **gguf_kwargs(resolve_model_path(model_cfg), model_cfg))
    if task_cls is not None and hasattr(task_cls, "check"):
        task_cls.check(model_cfg, config)
    return path, config


def model_is_there(model_cfg) -> str:
    """The model's path without reading its config: a local folder must still hold config.json (a
    GGUF package its file); a hub id is taken as it is. A one-line ConfigError otherwise."""
    path = existing_model_path(model_cfg)
    wanted = model_cfg.get("gguf_file") or "config.json"
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, wanted)):
        raise ConfigError(f"model.name={path!r}: expected a model folder with {wanted}")
    return path


def load_encoder(path: str):
    """(model, tokenizer). The pooler head is dropped: mean pooling never uses it, and DDP rejects
    parameters that receive no gradient."""
    defer_sklearn()
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model, tokenizer


def embed(model, batch: dict, pooling: str = "mean") -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    if pooling == "cls":
        pooled = out[:, 0]
    else:
        mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, dim=-1)


def contrastive_loss(q: torch.Tensor, d: torch.Tensor, scale: float) -> torch.Tensor:
    """In-batch negatives (the MultipleNegativesRanking objective): query i must pick doc i."""
    logits = scale * q @ d.T
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


@torch.no_grad()
def recall_at_1(
    model, tokenizer, queries, docs, max_length: int, batch_size: int, pooling: str, device
) -> float:
    """Fraction of held-out queries whose nearest doc (cosine) is their own."""
    was_training = model.training
    model.eval()

    def encode(texts):
        chunks = []
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            chunks.append(embed(model, {k: v.to(device) for k, v in batch.items()}, pooling))
        return torch.cat(chunks)

    q, d = encode(list(queries)), encode(list(docs))
    hits = (q @ d.T).argmax(dim=1) == torch.arange(len(q), device=q.device)
    model.train(was_training)
    return float(hits.float().mean())
