"""A sweep's results: one row per trial (params, metric, status, reclaims survived) as a printed
table, results.csv and results.md, the best trial as a ready-to-run fine-tune experiment, and a PNG
of the metric per trial over steps. Everything lands in `<root>/<sweep run>/`."""

from __future__ import annotations

import csv
import io
import math
import os

from omegaconf import OmegaConf

from spotrun.core.events import read_events
from spotrun.core.storage import Storage
from spotrun.jobs.finetune.outputs import is_finished, read_final_metrics
from spotrun.jobs.finetune.tasks import task_class

# what a fine-tune experiment sets
BEST_KEYS = ("model", "task", "optimizer", "scheduler", "data", "trainer", "checkpoint", "seed")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _status(trial, finished: bool) -> str:
    """finished: final/ written; stopped_early: ASHA ended it; error: out of retries; else unfinished."""
    if finished:
        return "finished"
    return {"TERMINATED": "stopped_early", "ERROR": "error"}.get(trial.status, "unfinished")


def trial_rows(cfg, analysis, trials: Storage, name_of) -> list[dict]:
    """One dict per trial, in trial order."""
    metric, rows = cfg.sweep.metric, []
    for trial in sorted(analysis.trials, key=lambda t: t.trial_id):
        name = name_of(trial.trial_id, trial.config)
        done = is_finished(trials, name)
        last = trial.last_result or {}
        row = {"trial": name, **_flat(trial.config)}
        row["step"] = last.get("step")
        row[metric] = last.get(metric)
        if done:  # every metric the task reported at the end (its headline one included)
            row.update(read_final_metrics(trials, name)["after"])
        row["status"] = _status(trial, done)
        row["reclaims"] = sum(e["kind"] == "resume" for e in read_events(trials, name))
        rows.append(row)
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def tables(rows: list[dict]) -> tuple[str, str]:
    """(CSV, Markdown) of the rows; columns are the union of the rows' keys, in first-seen order."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return buf.getvalue(), "\n".join(md) + "\n"


def best_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    ok = [r for r in rows if r["status"] == "finished" and isinstance(r.get(metric), int | float)]
    ok = [r for r in ok if not math.isnan(r[metric])]
    if not ok:
        return None
    return (min if mode == "min" else max)(ok, key=lambda r: r[metric])


def _diff(new: dict, old: dict) -> dict:
    out = {}
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(old.get(k), dict):
            sub = _diff(v, old[k])
            if sub:
                out[k] = sub
        elif old.get(k, object()) != v:
            out[k] = v
    return out


def best_experiment(cfg, params: dict, defaults: dict, name: str, header: str) -> str:
    """The best trial as a fine-tune experiment: only what differs from `conf/finetune.yaml`."""
    full = OmegaConf.to_container(OmegaConf.merge(cfg, params), resolve=True)
    diff = _diff({k: full[k] for k in BEST_KEYS}, {k: defaults[k] for k in BEST_KEYS})
    body = OmegaConf.to_yaml(OmegaConf.create({"experiment": name, **diff}))
    return f"# @package _global_\n{header}\n{body}"


def plot(curves: dict[str, list[tuple[float, float]]], metric: str) -> bytes:
    """PNG: the metric per trial over training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in sorted(curves.items()):
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.set(xlabel="step", ylabel=metric, title=f"{metric} per trial")
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def curves(analysis, metric: str, name_of) -> dict[str, list[tuple[float, float]]]:
    """(step, metric) per trial from Tune's per-trial progress (every forwarded report)."""
    out = {}
    frames = analysis.trial_dataframes
    for trial in analysis.trials:
        df = frames.get(trial.trial_id)
        points = []
        if df is not None and {"step", metric} <= set(df.columns):
            points = sorted(
                (float(s), float(m)) for s, m in zip(df["step"], df[metric], strict=True) if m == m and s == s
            )
        out[name_of(trial.trial_id, trial.config)] = points
    return out


def export_best(cfg, best: dict, params: dict, run_name: str, repo_root: str) -> tuple[str, str]:
    """The best trial as (experiment name, file text); also written to `sweep.export_dir` if set."""
    from spotrun.core.config import compose

    name = f"best-{run_name}"
    defaults = OmegaConf.to_container(compose("finetune", [], f"{repo_root}/conf"), resolve=True)
    s, headline = cfg.sweep, task_class(cfg).metric
    shown = f"{s.metric}={_fmt(best[s.metric])}"
    if headline != s.metric:
        shown += f", {headline} {_fmt(best.get(headline))}"
    header = (
        f"# Best trial {best['trial']} of sweep {run_name} ({shown}):\n"
        f"#   make finetune ARGS=experiment={name}"
    )
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "sweep"])
    text = best_experiment(job_cfg, params, defaults, name, header)
    if s.export_dir:
        folder = s.export_dir if os.path.isabs(s.export_dir) else os.path.join(repo_root, s.export_dir)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{name}.yaml"), "w") as f:
            f.write(text)
    return name, text


def write_results(cfg, grid, storage: Storage, trials: Storage, run_name: str, repo_root: str, name_of):
    """Print the table and write results.csv/.md, best_experiment.yaml and metric.png. Returns the rows."""
    analysis = grid._experiment_analysis  # the Trial objects: status, config, last result
    rows = trial_rows(cfg, analysis, trials, name_of)
    csv_text, md = tables(rows)
    write = lambda f, data: storage.write_bytes(storage.path(run_name, f), data)  # noqa: E731
    write("results.csv", csv_text.encode())
    write("results.md", md.encode())
    write("metric.png", plot(curves(analysis, cfg.sweep.metric, name_of), cfg.sweep.metric))
    print(md, end="")
    best = best_row(rows, cfg.sweep.metric, cfg.sweep.mode)
    if best is not None:
        params = next(t.config for t in analysis.trials if name_of(t.trial_id, t.config) == best["trial"])
        name, text = export_best(cfg, best, params, run_name, repo_root)
        write("best_experiment.yaml", text.encode())
        print(f"spotrun: best trial {best['trial']}: {cfg.sweep.metric}={_fmt(best[cfg.sweep.metric])}")
        print(
            f"spotrun: make finetune ARGS=experiment={name}   (conf: {cfg.sweep.export_dir or 'not exported'})"
        )
    print(f"spotrun: results in {storage.path(run_name, 'results.csv')}")
    return rows
