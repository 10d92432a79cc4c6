"""``lionagi-qe export``, ``import`` and ``migrate``: moving entries between files and stores.

- ``export FILE [--prefix P]`` writes every live entry (under ``P``) of the store that
  ``--database-url``/``--redis-url`` name to ``FILE`` as JSON Lines (the format is in
  :mod:`lionagi_qe.transfer.jsonl`). The file appears only when the export is complete.
- ``import FILE`` validates the whole file first (a bad line: one error naming its number, exit
  1, nothing written), then writes it.
- ``migrate --from URL --to URL [--prefix P]`` copies between any two backends, then verifies
  the target against the source (exit 1 if any entry is missing or differs).

Naming a backend for ``migrate``: ``--from``/``--to`` take a database URL (PostgreSQL, SQLite)
or a ``redis://`` URL (a Redis store on its own, key prefix ``lionagi:``). Add ``--from-redis``
/``--to-redis`` to a database URL for the cache tier (``CachedMemory``: the database plus its
Redis cache). Migrating *into* a cached store should name its Redis: every write then
invalidates the cache records it replaces (without it, readers of the cache may see old values
until ``cache_ttl``). Reading *from* a cached store reads its database, the source of truth.
When ``--from`` (or ``--to``) is left out, that side is the store ``--database-url`` and
``--redis-url`` (or ``Settings``) name, as for every other command; at least one must be given
and the two sides must differ.

Progress goes to stderr (a rich progress bar on a terminal); stdout gets the summary, or with
``--json`` one JSON document. Passwords are masked everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from lionagi_qe.backends.protocol import DEFAULT_SCAN_BATCH, MemoryBackend
from lionagi_qe.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    DatabaseUrl,
    JsonOutput,
    RedisUrl,
    emit_json,
    fail,
    resolve_urls,
    run,
    secrets,
    stderr_console,
    stdout_console,
    with_memory,
)
from lionagi_qe.config import mask_url
from lionagi_qe.transfer import (
    DEFAULT_CONCURRENCY,
    MigrateSummary,
    export_jsonl,
    import_jsonl,
    migrate,
)

Prefix = Annotated[
    str | None,
    typer.Option(
        "--prefix", help="Only keys starting with this literal prefix.", show_default=False
    ),
]
BatchSize = Annotated[
    int,
    typer.Option("--batch-size", min=1, help="Entries read and written per round trip."),
]
Concurrency = Annotated[
    int,
    typer.Option("--concurrency", min=1, help="Single-entry writes in flight at once."),
]

_PHASES = {
    "export": "exporting",
    "validate": "validating",
    "import": "importing",
    "copy": "copying",
    "verify": "verifying",
}


def register(app: typer.Typer) -> None:
    """Add ``export``, ``import`` and ``migrate`` to ``app``."""
    app.command("export")(export_command)
    app.command("import")(import_command)
    app.command("migrate")(migrate_command)


class _Bar:
    """A progress callback drawing one rich task per phase, on stderr."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, Any] = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        task = self._tasks.get(phase)
        if task is None:
            task = self._tasks[phase] = self._progress.add_task(
                _PHASES.get(phase, phase), total=total
            )
        self._progress.update(task, completed=done, total=total)


@contextmanager
def _progress_bar() -> Iterator[_Bar]:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=False,
    )
    with progress:
        yield _Bar(progress)


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f} entries/s" if seconds > 0 else "-"


def _file_error(path: Path, exc: OSError) -> str:
    return f"{path}: {exc.strerror or type(exc).__name__}"


def export_command(
    file: Annotated[Path, typer.Argument(help="The JSON Lines file to write (replaced).")],
    prefix: Prefix = None,
    batch_size: BatchSize = DEFAULT_SCAN_BATCH,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Write every live entry (under --prefix) to FILE as JSON Lines."""
    if file.is_dir() or not file.parent.is_dir():
        fail(f"{file}: not a file in an existing directory", EXIT_USAGE)

    async def work(memory: MemoryBackend) -> Any:
        with _progress_bar() as bar:
            try:
                return await export_jsonl(
                    memory, file, prefix=prefix, batch_size=batch_size, progress=bar
                )
            except OSError as exc:  # the backends translate their own; this is the file
                fail(_file_error(file, exc))

    summary = with_memory(database_url, redis_url, work)
    document = {"file": str(file), "prefix": prefix, **summary.as_dict()}
    if json_output:
        emit_json(document)
        return
    stdout_console().print(
        f"exported {summary.entries} entries ({summary.bytes:,} bytes) to {file} in "
        f"{summary.seconds:.2f} s ({_rate(summary.entries, summary.seconds)})",
        markup=False,
        soft_wrap=True,
    )


def import_command(
    file: Annotated[
        Path,
        typer.Argument(
            help="The JSON Lines file to read.", exists=True, dir_okay=False, readable=True
        ),
    ],
    batch_size: BatchSize = DEFAULT_SCAN_BATCH,
    concurrency: Concurrency = DEFAULT_CONCURRENCY,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Validate every line of FILE, then store its entries (nothing is written if one is bad)."""

    async def work(memory: MemoryBackend) -> Any:
        with _progress_bar() as bar:
            try:
                return await import_jsonl(
                    memory, file, batch_size=batch_size, concurrency=concurrency, progress=bar
                )
            except OSError as exc:
                fail(_file_error(file, exc))

    summary = with_memory(database_url, redis_url, work)
    document = {"file": str(file), **summary.as_dict()}
    if json_output:
        emit_json(document)
        return
    stdout_console().print(
        f"imported {summary.entries} entries from {file} in {summary.seconds:.2f} s "
        f"({_rate(summary.entries, summary.seconds)})",
        markup=False,
        soft_wrap=True,
    )


def _side(
    name: str, url: str | None, redis: str | None, configured: tuple[str, str | None] | None
) -> tuple[str, str | None]:
    """The (database or Redis URL, cache Redis URL) of one side of a migration."""
    if url is None:
        assert configured is not None
        url = configured[0]
        redis = redis if redis is not None else configured[1]
    if not url:
        fail(f"--{name} must not be empty", EXIT_USAGE)
    secrets.add(url)
    secrets.add(redis)
    return url, redis or None


def _describe(side: tuple[str, str | None]) -> dict[str, str | None]:
    return {"url": mask_url(side[0]), "redis_url": mask_url(side[1])}


def migrate_command(
    from_url: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Source: a PostgreSQL/SQLite URL, or redis://… for a Redis store. "
            "Default: --database-url/--redis-url (or Settings).",
            show_default=False,
        ),
    ] = None,
    to_url: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Target: a PostgreSQL/SQLite URL, or redis://… for a Redis store. "
            "Default: --database-url/--redis-url (or Settings).",
            show_default=False,
        ),
    ] = None,
    from_redis: Annotated[
        str | None,
        typer.Option(
            "--from-redis",
            help="Redis cache in front of the --from database (a cached store).",
            show_default=False,
        ),
    ] = None,
    to_redis: Annotated[
        str | None,
        typer.Option(
            "--to-redis",
            help="Redis cache in front of the --to database: its records are invalidated.",
            show_default=False,
        ),
    ] = None,
    prefix: Prefix = None,
    batch_size: BatchSize = DEFAULT_SCAN_BATCH,
    concurrency: Concurrency = DEFAULT_CONCURRENCY,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Compare the target with the source.")
    ] = True,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Copy every live entry (under --prefix) from one backend to another, then verify.

    Backends: a PostgreSQL/SQLite URL, or redis://… for a Redis store on its own.

    A cached store is its database URL plus --from-redis/--to-redis (its Redis cache).

    Values, partitions, metadata and remaining TTLs are kept; re-running is harmless.

    Exit 1 if verification finds an entry missing or different in the target.
    """
    if from_url is None and to_url is None:
        fail("give --from or --to (or both)", EXIT_USAGE)
    configured = None
    if from_url is None or to_url is None:
        configured = resolve_urls(database_url, redis_url)
    source = _side("from", from_url, from_redis, configured)
    target = _side("to", to_url, to_redis, configured)
    if source == target:
        fail("--from and --to name the same store", EXIT_USAGE)

    async def work() -> MigrateSummary:
        from lionagi_qe.factory import open_memory

        origin = open_memory(*source)
        try:
            destination = open_memory(*target)
            try:
                with _progress_bar() as bar:
                    return await migrate(
                        origin,
                        destination,
                        prefix=prefix,
                        batch_size=batch_size,
                        concurrency=concurrency,
                        check=verify,
                        progress=bar,
                    )
            finally:
                await destination.close()
        finally:
            await origin.close()

    summary = run(work)
    document = {
        "source": _describe(source),
        "target": _describe(target),
        "prefix": prefix,
        **summary.as_dict(),
    }
    check = summary.verification
    if json_output:
        emit_json(document)
        if not summary.ok:
            raise typer.Exit(EXIT_FAILURE)
        return
    console = stdout_console()
    console.print(
        f"copied {summary.written} of {summary.read} entries in {summary.seconds:.2f} s "
        f"({_rate(summary.read, summary.seconds)}); {summary.expired} expired on the way",
        markup=False,
        soft_wrap=True,
    )
    if check is None:
        return
    console.print(
        f"verified: {check.matched} of {check.source} source entries match in the target "
        f"({check.expiring} expiring, {check.extra} only in the target)",
        markup=False,
        soft_wrap=True,
    )
    if not check.ok:
        fail(
            f"verification failed: {check.missing} missing, {check.different} different "
            f"(e.g. {', '.join(repr(key) for key in check.examples[:3])})"
        )
