"""``lionagi-qe bench``: this library beside the raw drivers, in one process and one run."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from lionagi_qe.cli.common import (
    EXIT_USAGE,
    JsonOutput,
    emit_json,
    fail,
    run,
    secrets,
    stderr_console,
    stdout_console,
)


def _default_database_url() -> str:
    from lionagi_qe.bench import DEFAULT_DATABASE_URL

    configured = os.environ.get("AQE_DATABASE_URL", "")
    if configured.startswith("postgres"):
        return configured
    return DEFAULT_DATABASE_URL


def bench(
    backend: Annotated[
        list[str] | None,
        typer.Option(
            "--backend",
            "-b",
            help="postgres, sqlite, redis or cached; repeat for several (default: all four). "
            "postgres also runs the Q-value and work-queue sections.",
            show_default=False,
        ),
    ] = None,
    ops: Annotated[
        int | None,
        typer.Option("--ops", help="Sequential calls per operation and repetition [2000].", min=1),
    ] = None,
    repeat: Annotated[
        int | None,
        typer.Option("--repeat", "--repeats", help="Repetitions (order flips each) [5].", min=1),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size", help="Keys in the store search/list_keys run in, 50 a prefix [100000]."
        ),
    ] = None,
    batch: Annotated[
        int | None, typer.Option("--batch", help="Entries per store_many call [10000].", min=1)
    ] = None,
    tasks: Annotated[
        int | None,
        typer.Option("--tasks", help="Concurrent tasks in the concurrent sections [50].", min=1),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="PostgreSQL server to use; the run creates and drops a database of its own "
            "there. Default: AQE_BENCH_DATABASE_URL, else AQE_DATABASE_URL if PostgreSQL, else "
            "postgresql://postgres@127.0.0.1:5432/postgres.",
            show_default=False,
        ),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            help="Redis server; only the run's own key prefixes are written and deleted. "
            "Default: AQE_BENCH_REDIS_URL, else AQE_REDIS_URL, else redis://127.0.0.1:6379/0.",
            show_default=False,
        ),
    ] = None,
    smoke: Annotated[
        bool,
        typer.Option(
            "--smoke", help="A few operations at tiny sizes, no targets: checks it all works."
        ),
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", help="Draw the ratios to FILE.png (needs the 'bench' extra: matplotlib)."
        ),
    ] = None,
    growth: Annotated[
        bool,
        typer.Option(
            "--growth",
            help="Instead: how retrieve/search/list_keys/claim move as PostgreSQL grows "
            "(--growth-sizes), and cleanup_expired of 100,000 entries beside a writer.",
        ),
    ] = False,
    growth_sizes: Annotated[
        str | None,
        typer.Option(
            "--growth-sizes",
            help="Comma-separated table sizes for --growth [10000,100000,1000000].",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress lines on stderr.")
    ] = False,
    json_output: JsonOutput = False,
) -> None:
    """Benchmark every backend beside the raw driver doing the same work (SPEC §10).

    Each operation is interleaved call by call with its raw twin (same statements, payloads and
    servers), the order flipping every repetition; concurrent sections alternate whole blocks of
    50 tasks. Reports ops/s, p50, p99, the ratio to the raw driver and the worst event-loop
    stall, then the §10 targets and the seed's expectations.
    """
    from lionagi_qe.bench import (
        DEFAULT_REDIS_URL,
        BenchOptions,
        render,
        run_bench,
    )

    sizes: dict[str, Any] = {
        name: value
        for name, value in (
            ("ops", ops),
            ("repeats", repeat),
            ("store_size", size),
            ("batch", batch),
            ("tasks", tasks),
        )
        if value is not None
    }
    urls: dict[str, Any] = {
        "database_url": database_url
        or os.environ.get("AQE_BENCH_DATABASE_URL")
        or _default_database_url(),
        "redis_url": redis_url
        or os.environ.get("AQE_BENCH_REDIS_URL")
        or os.environ.get("AQE_REDIS_URL")
        or DEFAULT_REDIS_URL,
    }
    if backend:
        urls["backends"] = tuple(dict.fromkeys(backend))
    secrets.add(urls["database_url"])
    secrets.add(urls["redis_url"])
    options = BenchOptions.smoke_run(**sizes, **urls) if smoke else BenchOptions(**sizes, **urls)
    try:
        options.check()
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    if plot is not None and plot.suffix.lower() != ".png":
        fail("--plot writes a PNG: give a FILE.png", EXIT_USAGE)
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        # Checked before the run, not after minutes of measuring.
        fail("--plot needs matplotlib: pip install 'lionagi-qe[bench]'", EXIT_USAGE)

    progress = Console(stderr=True, highlight=False, log_path=False)

    def log(message: str) -> None:
        if not quiet:
            progress.log(message)

    if growth:
        given: dict[str, Any] = {"ops": ops, "repeats": repeat}
        amounts = {name: value for name, value in given.items() if value is not None}
        if growth_sizes:
            try:
                amounts["sizes"] = tuple(int(part) for part in growth_sizes.split(","))
            except ValueError:
                fail("--growth-sizes takes comma-separated integers", EXIT_USAGE)
        _growth(options, amounts, log, json_output=json_output, plot=plot, quiet=quiet)
        return
    report = run(lambda: run_bench(options, log))
    _output(report, render, json_output=json_output, plot=plot, quiet=quiet)


def _growth(
    options: Any,
    amounts: dict[str, Any],
    log: Callable[[str], None],
    *,
    json_output: bool,
    plot: Path | None,
    quiet: bool,
) -> None:
    from lionagi_qe.bench import GrowthOptions, render_growth, run_growth

    url = options.database_url
    base = GrowthOptions.smoke_run(url) if options.smoke else GrowthOptions(url)
    growth = replace(base, **amounts)
    try:
        growth.check()
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    report = run(lambda: run_growth(growth, log))
    _output(report, render_growth, json_output=json_output, plot=plot, quiet=quiet)


def _output(
    report: dict[str, Any],
    render: Callable[[Console, dict[str, Any]], None],
    *,
    json_output: bool,
    plot: Path | None,
    quiet: bool,
) -> None:
    """The PNG if asked; then the tables (stderr with --json, unless --quiet) and the JSON."""
    from lionagi_qe.bench import plot_ratios

    if plot is not None:
        try:
            plot_ratios(report, plot)
        except RuntimeError as exc:
            fail(str(exc))
        report["plot"] = str(plot)
    if json_output:
        if not quiet:
            render(_wide(stderr_console()), report)
        emit_json(report)
    else:
        render(_wide(stdout_console()), report)


def _wide(console: Any) -> Any:
    # The results table is wide; in a pipe rich would otherwise wrap it at 80 columns.
    console.width = max(console.width, 160)
    return console


def register(app: typer.Typer) -> None:
    """Add ``bench`` to ``app``."""
    app.command("bench")(bench)
