"""FSDP2 for the causal-LM task (`trainer.parallel=fsdp`): torch's `fully_shard` on every decoder
layer and on the root, so each rank holds 1/world of the weights, gradients and optimizer state.

Checkpoints go through `torch.distributed.checkpoint` (DCP) with `async_save`: every rank stages its
own shards to CPU and writes them in the background; no rank ever gathers the whole model. A LoRA
run saves the adapter shards only (frozen base weights are skipped).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# DDP (trainer.parallel=ddp) syncs buffers once, when it wraps the model, not before each forward: a
# transformer's buffers (position ids) never change. The tasks call the model twice a step (queries,
# then documents); with torch's default the second call's broadcast rewrites in place the position ids
# the first saved for backward, and backward fails on NCCL ("modified by an inplace operation":
# bench/gpu (python -m bench.gpu) on an H200, torch 2.11's equivalent `broadcast_buffers=False` fixed it).
DDP_OPTIONS = {"forward_sync_buffers": False}


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks: Hugging Face causal LMs keep them in a ModuleList named `layers`
    (Llama, Mistral, Qwen...) or `h` (GPT-2 style)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h"):
            return list(module)
    return []


def shard_model(model: torch.nn.Module, on_gpu: bool) -> None:
    """Shard in place: one FSDP unit per block (its all-gather overlaps the previous block's
    compute), then the root (embeddings, norm, head). bf16 compute on GPU, fp32 reductions."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if on_gpu else None
    kwargs = {"mp_policy": mp} if mp else {}
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


class ShardedCheckpoint:
    """DCP save/load of (model, optimizer) shards; async writes run on their own gloo group so they
    never contend with the training collectives."""

    def __init__(self, adapter_only: bool):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        self.options = StateDictOptions(ignore_frozen_params=adapter_only, strict=not adapter_only)
        self.adapter_only = adapter_only
        self.group = dist.new_group(backend="gloo")
        self.future = None

    def _state(self, model, opt) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, opt, options=self.options)
        if self.adapter_only:  # a frozen weight tied to another (embeddings <-> head) slips through
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            model_sd = {k: v for k, v in model_sd.items() if k in trainable}
        return {"model": model_sd, "optim": optim_sd}

    def save(self, folder: str, model, opt):
        """Stage this rank's shards and start writing them to `folder`; returns the write's future
        (on rank 0 it completes once every rank's shards and the DCP metadata are written)."""
        import torch.distributed.checkpoint as dcp

        self.wait()  # one write in flight per rank
        self.future = dcp.async_save(self._state(model, opt), checkpoint_id=folder, process_group=self.group)
        return self.future

    def wait(self) -> None:
        if self.future is not None:
            self.future.result()
            self.future = None

    def load(self, folder: str, model, opt) -> None:
        """Every rank reads its own shards of `folder` into model and optimizer (a collective)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._state(model, opt)
        dcp.load(state, checkpoint_id=folder, storage_reader=safe_reader(folder))
        set_state_dict(
            model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"], options=self.options
        )

    def full_trainable_state(self, model) -> dict[str, torch.Tensor]:
        """The trained tensors (the adapter, or every weight) as full CPU tensors on rank 0, {} on
        the others: a collective, one tensor gathered at a time. Only for writing final/."""
        out = {}
        for name, param in model.named_parameters():
            if self.adapter_only and not param.requires_grad:
                continue
            full = param.full_tensor() if hasattr(param, "full_tensor") else param
            if dist.get_rank() == 0:
                out[name] = full.detach().cpu()
        return out


# DCP writes its `.metadata` with pickle and reads it back with a bare `pickle.load`: a checkpoint
# folder in a (mounted) bucket could then run code. Read it with an unpickler that builds only the
# (module, name) pairs below, DCP's own metadata classes and plain values, found by exact name: pickle
# protocol 4 resolves dotted names, so `torch.distributed.checkpoint.filesystem` + `os.system` would be
# os.system. Shard files are already read with `weights_only=True`.
_META = "torch.distributed.checkpoint.metadata"
_SAFE_GLOBALS = frozenset(
    [("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str")]
    + [("builtins", n) for n in ("bytes", "bool", "slice")]
    + [("collections", "OrderedDict"), ("collections", "defaultdict"), ("torch", "Size")]
    + [("torch.serialization", "_get_layout")]  # looks a layout up by name in a fixed table
    + [("pathlib", "PosixPath"), ("pathlib", "PurePosixPath")]  # the checkpoint id DCP records
    + [("torch.distributed.checkpoint.filesystem", "_StorageInfo")]
    + [(_META, n) for n in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties")]
    + [(_META, n) for n in ("TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata")]
    + [(_META, "_MEM_FORMAT_ENCODING")]
)
_TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)  # torch.float32, torch.strided...


def _safe_global(module: str, name: str):
    """The allowed object `module`.`name`, looked up in that module's own namespace (no dotted
    traversal), and only if it is what it claims: defined there under that name. Else None."""
    import importlib

    if "." in name or not ((module, name) in _SAFE_GLOBALS or module == "torch"):
        return None
    obj = vars(importlib.import_module(module)).get(name)
    if module == "torch" and (module, name) not in _SAFE_GLOBALS:
        return obj if isinstance(obj, _TORCH_VALUES) else None  # dtypes etc. are values, not classes
    own = getattr(obj, "__module__", None) == module and getattr(obj, "__qualname__", None) == name
    return obj if own else None


def _restricted_load(stream):
    import pickle

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            obj = _safe_global(module, name)
            if obj is None:
                raise pickle.UnpicklingError(
                    f"DCP metadata refers to {module}.{name}: refused (not DCP metadata)"
                )
            return obj

    return Unpickler(stream).load()


def safe_reader(folder: str):
    """A DCP FileSystemReader whose metadata load cannot run code."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
                metadata = _restricted_load(f)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(folder)


def read_metadata_files(path: str) -> dict[str, int]:
    """{shard file name: the bytes it must hold at least} from a DCP `.metadata` (restricted load)."""
    with open(path, "rb") as f:
        metadata = _restricted_load(f)
    sizes: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        name = str(info.relative_path)
        sizes[name] = max(sizes.get(name, 0), int(info.offset) + int(info.length))
    return sizes
