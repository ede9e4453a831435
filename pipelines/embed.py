"""Embed a corpus on Ray Data, exactly once, skipping every shard a previous launch committed.

    python -m pipelines.embed [experiment=tiny] [embed.input=PATH_OR_URI] [embed.text_column=doc] ...

Exit codes: 0 finished, 1 failed, 2 bad input (nothing started), 75 preempted (relaunch me).
"""

from __future__ import annotations

import sys

from spotrun.core.config import EXIT_BAD_INPUT, ConfigError, compose
from spotrun.core.paths import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    try:
        from spotrun.jobs.embed import config as embed_config

        embed_config.register()
        cfg = compose("embed", overrides, conf_dir=f"{REPO_ROOT}/conf")
        embed_config.validate(cfg)
        from spotrun.core.models import check_model
        from spotrun.core.storage import storage_from_cfg
        from spotrun.jobs.embed.corpus import load_corpus
        from spotrun.jobs.embed.ledger import ShardLedger, fingerprint
        from spotrun.recovery.runtime import resolve_run_name

        run_name = resolve_run_name(cfg)
        model_path = check_model(cfg.embed.model)
        storage = storage_from_cfg(cfg, REPO_ROOT)
        unreachable = storage.probe()
        if unreachable:
            raise ConfigError(
                f"storage.root={cfg.storage.root!r}: expected a reachable folder or bucket ({unreachable})"
            )
        corpus = load_corpus(cfg.embed, REPO_ROOT, cfg.storage.endpoint, cfg.storage.region)
        e = cfg.embed
        ShardLedger(storage, run_name).ensure_plan(
            {
                "rows": len(corpus),
                "shard_rows": e.shard_rows,
                "fingerprint": fingerprint(corpus),
                "text_column": e.text_column,
                "id_column": e.id_column,
                "model": e.model.name,
            }
        )
    except ConfigError as err:
        print(f"spotrun: config error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from spotrun.jobs.embed.driver import run_embed

    return run_embed(cfg, storage, run_name, model_path, corpus)


if __name__ == "__main__":
    sys.exit(main())
