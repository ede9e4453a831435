"""The run's `final/` folder: a model loadable with `AutoModel.from_pretrained`, then metrics.json.

metrics.json is written last: its presence means the run finished, and a relaunch exits at once.
"""

from __future__ import annotations

import json
import os
import tempfile

from spotrun.storage import Storage


def final_dir(storage: Storage, run_name: str) -> str:
    return storage.path(run_name, "final")


def is_finished(storage: Storage, run_name: str) -> bool:
    return storage.exists(f"{final_dir(storage, run_name)}/metrics.json")


def read_final_metrics(storage: Storage, run_name: str) -> dict:
    return json.loads(storage.read_bytes(f"{final_dir(storage, run_name)}/metrics.json"))


def write_final(storage: Storage, run_name: str, model, tokenizer, metrics: dict, local_dir: str) -> None:
    os.makedirs(local_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=local_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        dest = final_dir(storage, run_name)
        for name in sorted(os.listdir(tmp)):
            storage.upload_file(os.path.join(tmp, name), f"{dest}/{name}")
    storage.write_bytes(f"{dest}/metrics.json", json.dumps(metrics, indent=1, sort_keys=True).encode())
