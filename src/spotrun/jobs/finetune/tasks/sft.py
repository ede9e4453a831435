"""Supervised fine-tuning of a causal LM on instruction/response records, with LoRA or in full.

Loss: next-token cross-entropy on the response tokens only. Metric: eval loss (lower is better) on
the first `data.eval_size` held-out records. bf16 autocast on GPU, fp32 on CPU. With
`trainer.parallel=fsdp` the model is sharded (train/fsdp.py) and `sharded` tells the loop to
checkpoint through `save_sharded`/`load_sharded` and to evaluate and finish on every rank.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from spotrun.jobs.finetune.llm import (
    apply_lora,
    check_lora_targets,
    load_causal_lm,
    load_trainable_state,
    save_full_model,
    trainable_state,
)
from spotrun.jobs.finetune.outputs import write_final_with
from spotrun.jobs.finetune.sft_data import IGNORE, collate, encode_all, load_records


class SFTTask:
    """final/: adapter_model.safetensors + adapter_config.json (LoRA) or model.safetensors (full),
    the tokenizer, and with `model.save_merged` the merged model under final/merged/."""

    metrics = ("eval_loss",)
    metric, mode = "eval_loss", "min"

    @classmethod
    def check(cls, model_cfg, config) -> None:
        """Before Ray: every LoRA target names a linear module of this model."""
        check_lora_targets(config, model_cfg)

    def __init__(self, cfg, model_path: str, repo_root: str, device: torch.device):
        self.cfg, self.repo, self.device = cfg, repo_root, device
        base, self.tok = load_causal_lm(model_path, cfg.model)
        torch.manual_seed(cfg.seed)  # the adapter's initial weights: the same on every rank and launch
        self.model = apply_lora(base, cfg.model.lora) if cfg.model.lora.enabled else base
        self.model.to(device)
        # FSDP2: shard before the loop builds the optimizer; checkpoints then go through DCP
        self.sharded = cfg.trainer.parallel == "fsdp" and dist.is_initialized() and dist.get_world_size() > 1
        if self.sharded:
            from spotrun.jobs.finetune.fsdp import ShardedCheckpoint, shard_model

            shard_model(self.model, device.type == "cuda")
            self.shards = ShardedCheckpoint(adapter_only=cfg.model.lora.enabled)
        records = load_records(cfg.data, repo_root, "train")
        self.examples = encode_all(self.tok, records, cfg.data.max_length)
        if not self.examples:
            raise ValueError("no training record keeps a response token within data.max_length")

    def num_samples(self) -> int:
        return len(self.examples)

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def _forward(self, model, examples) -> tuple[torch.Tensor, int]:
        """(mean loss over response tokens, number of response tokens) of a batch."""
        batch = {k: v.to(self.device) for k, v in collate(examples, self.tok.pad_token_id).items()}
        on_gpu = self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=on_gpu):
            out = model(**batch)
        return out.loss.float(), int((batch["labels"][:, 1:] != IGNORE).sum())

    def loss(self, model, ids) -> torch.Tensor:
        return self._forward(model, [self.examples[i] for i in ids])[0]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        records = load_records(self.cfg.data, self.repo, "eval")[: self.cfg.data.eval_size]
        examples = encode_all(self.tok, records, self.cfg.data.max_length)
        was_training = self.model.training
        self.model.eval()
        total, tokens, bs = 0.0, 0, self.cfg.trainer.eval_batch_size
        for i in range(0, len(examples), bs):
            loss, n = self._forward(self.model, examples[i : i + bs])
            total, tokens = total + float(loss) * n, tokens + n
        self.model.train(was_training)
        # no held-out record fits data.max_length: nan (a sweep never ranks it best), not 0
        return {"eval_loss": total / tokens if tokens else float("nan")}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.model)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        load_trainable_state(self.model, tensors)

    # ----- FSDP (self.sharded): collectives, every rank calls them -----
    def save_sharded(self, folder: str, opt):
        """Start writing this rank's model + optimizer shards to `folder`; returns the future."""
        return self.shards.save(folder, self.model, opt)

    def load_sharded(self, folder: str, opt) -> None:
        self.shards.load(folder, self.model, opt)

    def write_final(self, storage, run_name: str, metrics: dict, local_dir: str) -> None:
        """Under FSDP every rank calls this (gathering the trained tensors is a collective)."""
        lora = self.cfg.model.lora.enabled
        full = self.shards.full_trainable_state(self.model) if self.sharded else None
        if self.sharded:
            self.shards.wait()
            if dist.get_rank() != 0:
                return

        def save(folder: str) -> None:
            if lora:
                self.model.save_pretrained(folder, safe_serialization=True, state_dict=full)
            else:
                save_full_model(self.model, folder, state_dict=full)
            self.tok.save_pretrained(folder)
            if self.cfg.model.save_merged and lora and not self.sharded:  # merging needs whole weights
                save_full_model(self.model.merge_and_unload(), os.path.join(folder, "merged"))
                self.tok.save_pretrained(os.path.join(folder, "merged"))

        write_final_with(storage, run_name, save, metrics, local_dir)
