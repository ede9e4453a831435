"""`spotrun <command> ...`: the commands around the pipelines (Typer: help, types, usage errors).

spotrun launch finetune|sweep|embed [--dryrun] [key=value ...]   submit a SkyPilot managed job
spotrun runs [ROOT] [--watch] [--prometheus FILE]                 every run under a storage root
spotrun report RUN [options]                                      goodput and cost of one run
spotrun chaos [options]                                           reclaim a run on purpose, report
"""

from __future__ import annotations

import enum
import sys
import time
from typing import Annotated

import typer
from typer._click import exceptions as click  # Typer 0.29 vendors click: its errors

from spotrun import jobs
from spotrun.core.errors import EXIT_BAD_INPUT

app = typer.Typer(
    help="Run ML jobs on spot GPUs without losing work.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # a bug shows Python's own traceback, not a decorated one
    context_settings={"help_option_names": ["-h", "--help"]},
)
# The argparse commands keep their own options (and --help): Typer hands them the rest as is.
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


# the registered job kinds (spotrun.jobs): a new kind is a new choice here with no edit
Job = enum.Enum("Job", {name: name for name in jobs.BUILTIN}, type=str)


@app.command(context_settings={"ignore_unknown_options": True})
def launch(
    job: Annotated[Job, typer.Argument(help="The job kind (conf/<job>.yaml; the task is sky/job.yaml).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Hydra overrides: key=value, group=option.")
    ] = None,
    dryrun: Annotated[
        bool, typer.Option("--dryrun", help="Print the rendered SkyPilot task; submit nothing.")
    ] = False,
) -> None:
    """Submit a job as a SkyPilot managed job (spot, recovered by itself). Without storage.root, your own
    bucket on gcp/aws is used (created on the first real launch)."""
    from spotrun.ops import launch as launching

    raise typer.Exit(launching.run(job.value, list(overrides or []), dryrun))


@app.command()
def runs(
    root: Annotated[
        str, typer.Argument(help="A storage root: a path, s3://bucket/prefix or gs://...")
    ] = "runs",
    endpoint: Annotated[str | None, typer.Option(help="Bucket endpoint (emulators, MinIO).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until interrupted.")] = False,
    every: Annotated[float, typer.Option(min=0.5, help="Seconds between refreshes with --watch.")] = 5.0,
    prometheus: Annotated[
        str | None, typer.Option(help="Also write the figures to FILE (Prometheus text).")
    ] = None,
    plain: Annotated[bool, typer.Option("--plain", help="Plain text, no colours or live view.")] = False,
) -> None:
    """Every run under a storage root: state, step, reclaims, checkpoint health, goodput, cost."""
    from spotrun.core.storage import open_storage
    from spotrun.ops import runs as listing

    try:
        storage = open_storage(root, endpoint=endpoint)
    except ValueError as e:
        print(f"spotrun: runs: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_INPUT) from None

    def refresh():
        rows = listing.collect(storage)
        if prometheus:
            listing.write_prometheus(rows, prometheus)
        return rows

    title = f"spotrun runs under {storage.uri}"
    rich_out = not plain and sys.stdout.isatty()
    if not watch:
        rows = refresh()
        _show(listing.rich_table(rows, title) if rich_out else f"{title}\n{listing.table(rows)}", rich_out)
        return
    _watch(refresh, title, every, rich_out)


def _show(what, rich_out: bool) -> None:
    if rich_out:
        from rich.console import Console

        Console().print(what)
    else:
        print(what, flush=True)


def _watch(refresh, title: str, every: float, rich_out: bool) -> None:
    from spotrun.ops import runs as listing

    try:
        if rich_out:
            from rich.live import Live

            with Live(listing.rich_table(refresh(), title), auto_refresh=False) as live:
                while True:
                    time.sleep(every)
                    live.update(listing.rich_table(refresh(), title), refresh=True)
        while True:
            print(f"{title} at {time.strftime('%H:%M:%S')}\n{listing.table(refresh())}\n", flush=True)
            time.sleep(every)
    except KeyboardInterrupt:
        return


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def report(ctx: typer.Context) -> None:
    """Goodput and cost of one run: spotrun report RUN [--root ROOT] [--json] (-h for all options)."""
    from spotrun.ops import report as reporting

    raise typer.Exit(reporting.main(list(ctx.args)))


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def chaos(ctx: typer.Context) -> None:
    """The local spot market: reclaim the fine-tune on purpose, relaunch, report (-h for options)."""
    from spotrun.ops import chaos as market

    raise typer.Exit(market.main(list(ctx.args)))


def main(argv: list[str] | None = None) -> int:
    """The `spotrun` console script and `python -m spotrun`: the exit code. A usage mistake is one
    line on stderr and exit 2 (Typer's own report is a multi-line box)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args, prog_name="spotrun", standalone_mode=False)
    except click.NoArgsIsHelpError:  # `spotrun` alone: the help, and a usage mistake's exit code
        main([*args, "--help"])
        return EXIT_BAD_INPUT
    except click.UsageError as e:
        where = (
            f"spotrun {e.ctx.command_path.split(' ', 1)[1]}"
            if e.ctx and " " in e.ctx.command_path
            else "spotrun"
        )
        print(f"spotrun: {' '.join(e.format_message().split())} (see `{where} --help`)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except click.ClickException as e:
        print(f"spotrun: {e.format_message()}", file=sys.stderr)
        return e.exit_code
    except typer.Abort:
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
