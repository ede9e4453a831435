"""Instruction/response records for the LLM SFT experiment, built offline from the stdlib pairs.

Each retrieval pair "module.func(signature)" -> "first docstring paragraph" becomes the instruction
"What does the Python function `module.func(signature)` do?" and that paragraph as the response.
The repo ships the files; this module regenerates them from data/stdlib_pairs:

    python -m spotrun.jobs.finetune.sft_pairs data/stdlib_pairs data/stdlib_sft
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def to_record(pair: dict) -> dict:
    return {
        "instruction": f"What does the Python function `{pair['query']}` do?",
        "response": pair["doc"],
    }


def convert(src: Path, dest: Path) -> dict[str, int]:
    """Write dest/{train,eval}.jsonl from src/{train,eval}.jsonl; returns the record counts."""
    dest.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "eval"):
        lines = (src / f"{split}.jsonl").read_text().splitlines()
        records = [to_record(json.loads(line)) for line in lines if line.strip()]
        (dest / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        counts[split] = len(records)
    return counts


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]), Path(sys.argv[2])))
