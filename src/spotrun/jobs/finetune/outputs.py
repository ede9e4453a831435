"""The run's `final/` folder: a model loadable with `AutoModel.from_pretrained`, then metrics.json.

metrics.json is written last: its presence means the run finished, and a relaunch exits at once.
On a fenced storage (spotrun.recovery.lease) a superseded attempt raises before its first upload
and, at the latest, right before metrics.json: it never marks the run finished.
"""

from __future__ import annotations

import json
import os
import tempfile

from spotrun.core.storage import Storage


def final_dir(storage: Storage, run_name: str) -> str:
    return storage.path(run_name, "final")


def is_finished(storage: Storage, run_name: str) -> bool:
    return storage.exists(f"{final_dir(storage, run_name)}/metrics.json")


def read_final_metrics(storage: Storage, run_name: str) -> dict:
    return json.loads(storage.read_bytes(f"{final_dir(storage, run_name)}/metrics.json"))


def write_final(storage: Storage, run_name: str, model, tokenizer, metrics: dict, local_dir: str) -> None:
    def save(tmp: str) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    write_final_with(storage, run_name, save, metrics, local_dir)


def write_final_with(storage: Storage, run_name: str, save, metrics: dict, local_dir: str) -> None:
    """`save(folder)` writes the outputs locally; every file (sub-folders too) is uploaded to final/,
    then metrics.json."""
    os.makedirs(local_dir, exist_ok=True)
    dest = final_dir(storage, run_name)
    storage.check_fence()
    with tempfile.TemporaryDirectory(dir=local_dir) as tmp:
        save(tmp)
        for folder, _, names in sorted(os.walk(tmp)):
            rel = os.path.relpath(folder, tmp)
            for name in sorted(names):
                target = f"{dest}/{name}" if rel == "." else f"{dest}/{rel}/{name}"
                storage.upload_file(os.path.join(folder, name), target)
    storage.check_fence(fresh=True)
    storage.write_bytes(f"{dest}/metrics.json", json.dumps(metrics, indent=1, sort_keys=True).encode())
