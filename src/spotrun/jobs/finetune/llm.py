"""Causal language models for supervised fine-tuning: loading (hub id, folder or GGUF), LoRA, checks.

`model.gguf_file` names a GGUF file inside the model folder (the offline SmolLM2 default ships one);
transformers dequantises it into an ordinary float model, cached once as safetensors. LoRA adapters
come from `peft`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import torch


def gguf_kwargs(path: str, model_cfg) -> dict:
    """`gguf_file=` for from_pretrained when the GGUF applies: the file is in the resolved folder, or
    the user named a hub repo of GGUF files (no local package). A hub fallback for a missing local
    package loads the ordinary safetensors weights of `model.name`."""
    name = model_cfg.get("gguf_file")
    if name and (os.path.isfile(os.path.join(path, name)) or not model_cfg.local_package):
        return {"gguf_file": name}
    return {}


def load_causal_lm(path: str, model_cfg):
    """(model, tokenizer) in fp32, with a pad token (padding is masked out of the loss anyway)."""
    from spotrun.core.models import defer_sklearn

    defer_sklearn()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = gguf_kwargs(path, model_cfg)
    if kw and os.path.isfile(os.path.join(path, kw["gguf_file"])):
        path, kw = dequantised_copy(path, kw["gguf_file"]), {}
    tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)
    return model, tokenizer


def dequantised_copy(folder: str, gguf_file: str) -> str:
    """A local safetensors copy of a GGUF model, made once per file (under HF_HOME/spotrun-gguf/):
    dequantising takes ~30 s per process, loading the copy ~2 s, and every relaunch loads it."""
    from huggingface_hub import constants

    st = os.stat(os.path.join(folder, gguf_file))
    key = f"v2:{os.path.realpath(folder)}/{gguf_file}:{st.st_size}:{st.st_mtime_ns}"
    cache = os.path.join(constants.HF_HOME, "spotrun-gguf", hashlib.sha256(key.encode()).hexdigest()[:16])
    if complete_copy(cache):  # renamed into place complete, never written in place
        return cache
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(cache), prefix=".tmp-")
    try:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # transformers' save_pretrained writes no weights on a rank other than 0: convert in a
            # fresh process, outside the process group
            code = (
                "import sys; from spotrun.jobs.finetune.llm import write_dequantised as w; w(*sys.argv[1:])"
            )
            subprocess.run([sys.executable, "-c", code, folder, gguf_file, tmp], check=True)
        else:
            write_dequantised(folder, gguf_file, tmp)
        if not complete_copy(tmp):
            raise RuntimeError(f"dequantising {folder}/{gguf_file} wrote no complete model into {tmp}")
        os.rename(tmp, cache)
    except OSError:  # another worker renamed its copy first: use that one
        if not complete_copy(cache):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache


def complete_copy(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f)) for f in ("config.json", "model.safetensors"))


def write_dequantised(folder: str, gguf_file: str, out: str) -> None:
    """Tokenizer, config and fp32 weights of the GGUF model as an ordinary transformers folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file).save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    save_full_model(model, out)


def apply_lora(model, lora_cfg):
    """Wrap `model` in a peft LoRA model: only the adapter's parameters require grad."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def module_names(config) -> list[str]:
    """Leaf names of the model's linear modules (what LoRA can target), built on the meta device
    from its config alone: no weights are loaded."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, torch.nn.Linear)}
    )


def check_lora_targets(config, model_cfg) -> None:
    """A one-line ConfigError when a LoRA target module names no linear module of the model."""
    from spotrun.core.config import ConfigError

    if not model_cfg.lora.enabled:
        return
    targets = list(model_cfg.lora.target_modules)
    names = module_names(config)
    unknown = [t for t in targets if t not in names]
    if not targets or unknown:
        raise ConfigError(
            f"model.lora.target_modules={targets}: expected names of the model's linear modules "
            f"({', '.join(names)}); unknown: {', '.join(unknown) or 'none given'}"
        )


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint holds: the LoRA adapter only, or every weight in full fine-tuning."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return model.state_dict()


def load_trainable_state(model, tensors: dict[str, torch.Tensor]) -> None:
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, tensors)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise ValueError(f"adapter checkpoint does not match the model ({missing[:3]})")
    else:
        model.load_state_dict(tensors)


def save_full_model(model, folder: str, state_dict: dict | None = None) -> None:
    """Every weight as safetensors + config, loadable with `AutoModelForCausalLM.from_pretrained`.
    A model dequantised from GGUF is a plain float model: drop the GGUF marker that blocks saving."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
