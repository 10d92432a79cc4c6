"""``lionagi-qe demo``: a simulated QE fleet working through the store, learning as it goes.

Where things run:

- a database URL (or none: the embedded SQLite file ``./aqe-memory.db``) holds the memory, the
  work queues and the Q-learning data; with ``--redis-url`` the memory is a
  :class:`~lionagi_qe.CachedMemory` in front of it (queues and learning stay in the database);
- a ``redis://`` URL as the database URL puts the memory on Redis alone, and the queues and
  learning (which need SQL) on the embedded SQLite file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from lionagi_qe.cli.common import (
    DatabaseUrl,
    JsonOutput,
    RedisUrl,
    emit_json,
    fail,
    load_settings,
    resolve_urls,
    run,
    stderr_console,
    stdout_console,
)
from lionagi_qe.config import DEFAULT_DATABASE_URL, mask_url

if TYPE_CHECKING:
    from lionagi_qe.backends.protocol import MemoryBackend
    from lionagi_qe.config import Settings
    from lionagi_qe.demo import DemoSummary
    from lionagi_qe.learning import DatabaseManager

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_STAGE_LABELS = {"generate": "generate suites", "execute": "execute suites", "analyse": "analyse"}


def open_stores(
    settings: Settings, url: str, redis: str | None, *, sql_url: str
) -> tuple[DatabaseManager, MemoryBackend]:
    """The demo's SQL database (queues, learning) and its memory, configured by ``settings``.

    Pool size and timeouts, statement and lock timeouts (``AQE_STATEMENT_TIMEOUT``,
    ``AQE_LOCK_TIMEOUT``) and the cache tier's TTL and socket timeouts apply here exactly as
    they do to ``open_memory``. Nothing connects yet.
    """
    from lionagi_qe.backends.sql import PostgresMemory
    from lionagi_qe.factory import open_memory
    from lionagi_qe.learning import DatabaseManager

    database = DatabaseManager(
        sql_url,
        min_connections=1,
        max_connections=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_recycle=settings.pool_recycle,
        statement_timeout=settings.statement_timeout,
        lock_timeout=settings.lock_timeout,
    )
    if url.startswith(_REDIS_SCHEMES):
        return database, open_memory(url, settings=settings)
    sql = PostgresMemory(database, max_value_bytes=settings.max_value_bytes)
    if redis is None:
        return database, sql
    from lionagi_qe.cache import CachedMemory

    cached = CachedMemory(
        sql,
        redis_url=redis,
        cache_ttl=settings.cache_ttl,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_connect_timeout,
        cluster=settings.redis_cluster,
    )
    return database, cached


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command("demo")(demo)


def demo(
    agents: Annotated[
        int, typer.Option("--agents", min=1, max=64, help="Test-generator agents.")
    ] = 3,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, max=100, help="Rounds of generate/execute/learn.")
    ] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the simulated outcomes.")] = 7,
    fleet: Annotated[
        str,
        typer.Option("--fleet", help="Fleet name: key prefix, queue names, learning states."),
    ] = "demo",
    cleanup: Annotated[
        bool,
        typer.Option(
            "--cleanup", help="Delete the run's entries and jobs afterwards (learning is kept)."
        ),
    ] = False,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Run a simulated QE fleet through the work queue, the memory and the Q-learning store.

    A fleet commander enqueues generation jobs; test generators pick a strategy from what the
    fleet learned, write suites and enqueue executions; executors run them (some fail and are
    retried); a coverage analyser rewards the strategies. Run it again: it starts from what it
    learned. Each run replaces the entries and jobs the previous one left.
    """
    settings = load_settings()
    url, redis = resolve_urls(database_url, redis_url)
    memory_on_redis = url.startswith(_REDIS_SCHEMES)
    if memory_on_redis and redis is not None:
        fail("two Redis URLs: give a database URL with --database-url, Redis with --redis-url")
    sql_url = DEFAULT_DATABASE_URL if memory_on_redis else url
    progress = None if json_output else _progress()

    async def work() -> DemoSummary:
        from lionagi_qe.demo import run_demo

        database, memory = open_stores(settings, url, redis, sql_url=sql_url)
        try:
            return await run_demo(
                memory,
                database,
                generators=agents,
                rounds=rounds,
                seed=seed,
                fleet=fleet,
                cleanup=cleanup,
                time_limit=60.0 + 0.5 * agents * rounds,
                on_progress=None if progress is None else _on_progress(progress),
                on_phase=None if progress is None else _on_phase(progress),
            )
        finally:
            await memory.close()
            await database.close()

    if progress is None:
        summary = run(work)
    else:
        with progress:
            summary = run(work)
    document = {
        "database_url": mask_url(sql_url),
        "memory": {
            "backend": summary.stats.get("backend"),
            "url": mask_url(url),
            "cache_url": mask_url(redis),
        },
        **summary.as_dict(),
    }
    if json_output:
        emit_json(document)
        return
    _print_summary(document, cleanup=cleanup)


# -- progress (stderr) -----------------------------------------------------------------------


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console(),
    )


def _on_progress(progress: Progress) -> Any:
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(_STAGE_LABELS.get(stage, stage), total=total)
        progress.update(tasks[stage], completed=done, total=total)

    return update


def _on_phase(progress: Progress) -> Any:
    def show(text: str) -> None:
        progress.console.print(Text(text, style="dim"))

    return show


# -- the summary (stdout) --------------------------------------------------------------------


def _table(title: str, *columns: str, text: tuple[str, ...] = ()) -> Table:
    """A table whose first column and ``text`` columns are left-aligned, numbers right."""
    table = Table(title=title, title_justify="left", title_style="bold")
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 or column in text else "right")
    return table


def _print_summary(summary: dict[str, Any], *, cleanup: bool) -> None:
    console = stdout_console()
    agents = summary["agents"]
    memory = summary["memory"]
    console.print(
        Text.assemble(
            (f"QE fleet demo '{summary['fleet']}' on {memory['backend']}", "bold"),
            f" — run {summary['run']}, seed {summary['seed']}, {summary['rounds']} rounds; "
            f"{agents['total']} agents: 1 commander, {agents['generators']} test generators, "
            f"{agents['executors']} test executors, 1 coverage analyser",
        )
    )
    console.print(
        Text(
            f"queues and learning: {summary['database_url']}"
            + (f"; memory cache: {memory['cache_url']}" if memory["cache_url"] else "")
        )
    )

    states = ("queued", "active", "done", "failed", "dead", "total")
    jobs = _table("Jobs", "queue", *states)
    for stage, counts in summary["jobs"].items():
        jobs.add_row(summary["queues"][stage], *(str(counts[state]) for state in states))
    console.print(jobs)

    results = summary["results"]
    tests = results["tests"]
    suites = results["suites"]
    outcome = Table(title="Results", title_justify="left", title_style="bold", show_header=False)
    outcome.add_column("what", style="bold")
    outcome.add_column("result")
    outcome.add_row(
        "suites",
        Text(
            f"{suites['generated']} generated, {suites['executed']} executed, "
            f"{suites['dead']} dead; {results['failed_attempts']} failed execution attempts"
        ),
    )
    outcome.add_row(
        "tests",
        Text.assemble(
            f"{tests['total']}: ",
            (f"{tests['passed']} passed", "green"),
            ", ",
            (f"{tests['failed']} failed (defects found)", "red" if tests["failed"] else "green"),
        ),
    )
    coverage = ", ".join(
        f"{module} {item['percent']:.0f}%" for module, item in results["coverage"].items()
    )
    outcome.add_row("coverage", Text(coverage or "none"))
    outcome.add_row("exploring choices", Text(str(results["explored"])))
    plan = summary["plan"]
    outcome.add_row(
        "plan",
        Text(
            f"{plan['status']} at version {plan['version']} "
            f"({summary['cas_retries']} compare-and-set retries)"
        ),
    )
    outcome.add_row("heartbeats", Text(f"{summary['heartbeats']['alive']} alive (TTL 30 s)"))
    console.print(outcome)

    learning = summary["learning"]
    learned = _table(
        f"Learned Q-values ({learning['agent_type']}, {learning['updates']} updates this run, "
        f"{learning['visits_before']} visits before it)",
        "state",
        "best strategy",
        "Q",
        "visits",
        "epsilon",
        "other strategies",
        text=("best strategy", "other strategies"),
    )
    for state, item in learning["states"].items():
        others = ", ".join(
            f"{action} {values['q_value']:.2f}"
            for action, values in sorted(
                item["actions"].items(), key=lambda pair: -pair[1]["q_value"]
            )
            if action != item["best_action"]
        )
        learned.add_row(
            state,
            Text(item["best_action"], style="cyan"),
            f"{item['q_value']:.3f}",
            str(item["visits"]),
            f"{item['epsilon']:.2f}",
            others,
        )
    console.print(learned)

    stats = summary["stats"]
    learning_stats = summary["learning_stats"]
    store = Table(title="Store", title_justify="left", title_style="bold", show_header=False)
    store.add_column("what", style="bold")
    store.add_column("figures")
    store.add_row(
        "memory",
        Text(
            f"{stats.get('total_keys')} live keys, {stats.get('total_expired')} expired, "
            f"{stats.get('size_bytes')} bytes"
        ),
    )
    q_values = learning_stats.get("q_values") or {}
    rewards = learning_stats.get("rewards") or {}
    sessions = learning_stats.get("sessions") or {}
    patterns = learning_stats.get("patterns") or {}
    store.add_row(
        "learning",
        Text(
            f"{q_values.get('count')} Q-values over {q_values.get('states')} states, "
            f"{rewards.get('count')} rewards, {sessions.get('count')} sessions, "
            f"{patterns.get('count')} patterns ({patterns.get('usage_count')} uses)"
        ),
    )
    removed = summary["removed_before"]
    store.add_row(
        "previous run",
        Text(f"{removed['entries']} entries and {removed['jobs']} jobs cleared first"),
    )
    store.add_row("elapsed", Text(f"{summary['elapsed_seconds']:.2f} s"))
    console.print(store)

    per_agent = _table("Agents", "agent", "claims", "completed", "failed", "enqueued", "writes")
    for agent in summary["per_agent"]:
        per_agent.add_row(
            Text(agent["agent_id"], style="cyan"),
            *(
                str(agent[name])
                for name in ("claims", "completed", "failed_attempts", "enqueued", "writes")
            ),
        )
    console.print(per_agent)
    console.print(Text("Run it again: it starts from what this run learned."))
    if not cleanup:
        prefix = summary["prefixes"][0]
        console.print(Text(f"entries kept under {prefix}: lionagi-qe memory ls {prefix}"))
