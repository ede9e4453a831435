"""Retrieval pairs mined from the Python standard library: a function's signature -> its docstring.

A real text task that needs no download: every machine with Python has the source. The repo ships
the mined files (so every machine trains on the same bytes); this module regenerates them:

    python -m spotrun.jobs.finetune.stdlib_pairs data/stdlib_pairs
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import sysconfig
from pathlib import Path

MIN_DOC_WORDS = 4


def _signature(module: str, qualname: str, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    args = ast.unparse(fn.args)
    return f"{module}.{qualname}({args})"


def _first_paragraph(doc: str) -> str:
    para = doc.strip().split("\n\n")[0]
    return " ".join(para.split())


def _walk(tree: ast.AST, module: str, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ClassDef):
            yield from _walk(node, module, f"{prefix}{node.name}.")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if node.name.startswith("_") or not doc:
                continue
            text = _first_paragraph(doc)
            if len(text.split()) >= MIN_DOC_WORDS:
                yield {"query": _signature(module, prefix + node.name, node), "doc": text}


def mine(stdlib: Path) -> list[dict]:
    """Every public, documented function of the stdlib at `stdlib`, deduplicated and sorted."""
    pairs, seen_docs = [], set()
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(
            p in {"test", "tests", "idlelib", "site-packages", "lib2to3"} or p.startswith("_")
            for p in rel.parts[:-1]
        ):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for pair in _walk(tree, module):
            if pair["doc"] not in seen_docs:  # duplicate docs make recall@1 ambiguous
                seen_docs.add(pair["doc"])
                pairs.append(pair)
    return pairs


def split(pairs: list[dict], eval_fraction: float = 0.1) -> tuple[list[dict], list[dict]]:
    """A stable split: a pair's side depends only on its own text, not on the stdlib version."""

    def bucket(p: dict) -> float:
        return int(hashlib.sha256(p["query"].encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    train = [p for p in pairs if bucket(p) >= eval_fraction]
    held_out = [p for p in pairs if bucket(p) < eval_fraction]
    return train, held_out


def write(out_dir: Path) -> tuple[int, int]:
    train, held_out = split(mine(Path(sysconfig.get_paths()["stdlib"])))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", held_out)):
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return len(train), len(held_out)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "data/stdlib_pairs")
    n_train, n_eval = write(out)
    print(f"wrote {n_train} train and {n_eval} eval pairs to {out}")
