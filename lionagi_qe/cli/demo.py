"""``lionagi-qe demo``: a simulated QE fleet working through the store."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from lionagi_qe.backends.protocol import MemoryBackend
from lionagi_qe.cli.common import (
    DatabaseUrl,
    JsonOutput,
    RedisUrl,
    emit_json,
    resolve_urls,
    stderr_console,
    stdout_console,
    with_memory,
)
from lionagi_qe.config import mask_url


def demo(
    agents: Annotated[
        int, typer.Option("--agents", min=1, max=64, help="Test-generator agents.")
    ] = 3,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, max=100, help="Suites each generator writes.")
    ] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the agents' choices.")] = 7,
    cleanup: Annotated[
        bool, typer.Option("--cleanup", help="Delete the demo's entries (aqe/demo/) afterwards.")
    ] = False,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Run a simulated QE fleet (commander, generators, executors) through the store.

    Everything it writes is under aqe/demo/; a run replaces what the previous one left there.
    """
    from lionagi_qe.demo import DemoSummary, run_demo

    url, _redis = resolve_urls(database_url, redis_url)
    status = None if json_output else stderr_console().status("starting the fleet")

    def on_phase(text: str) -> None:
        if status is not None:
            status.update(text)

    def work(memory: MemoryBackend) -> Awaitable[DemoSummary]:
        return run_demo(
            memory,
            generators=agents,
            rounds=rounds,
            seed=seed,
            cleanup=cleanup,
            on_phase=on_phase,
        )

    if status is None:
        summary = with_memory(database_url, redis_url, work)
    else:
        with status:
            summary = with_memory(database_url, redis_url, work)
    document = {"database_url": mask_url(url), **summary.as_dict()}
    if json_output:
        emit_json(document)
        return
    _print_demo(document, cleanup=cleanup)


def _print_demo(summary: dict[str, Any], *, cleanup: bool) -> None:
    console = stdout_console()
    stats = summary["stats"]
    tests = summary["tests"]
    heartbeats = summary["heartbeats"]
    agents = summary["agents"]
    table = Table(
        title=f"QE fleet demo on {stats.get('backend', '?')} ({summary['database_url']})",
        title_justify="left",
        show_header=False,
    )
    table.add_column("what", style="bold")
    table.add_column("result")
    rows: list[tuple[str, Text]] = [
        (
            "agents",
            Text(
                f"{agents['total']}: 1 commander, {agents['generators']} test generators, "
                f"{agents['executors']} test executors"
            ),
        ),
        (
            "suites",
            Text(
                f"{summary['suites']['generated']} generated, "
                f"{summary['suites']['executed']} executed ({summary['rounds']} rounds)"
            ),
        ),
        (
            "tests",
            Text.assemble(
                f"{tests['total']}: ",
                (f"{tests['passed']} passed", "green"),
                ", ",
                (f"{tests['failed']} failed", "red" if tests["failed"] else "green"),
            ),
        ),
        (
            "claims",
            Text(f"{summary['claims']['won']} won, {summary['claims']['lost']} lost to a peer"),
        ),
        ("compare-and-set retries", Text(str(summary["cas_retries"]))),
        (
            "plan",
            Text(f"{summary['plan']['status']} at version {summary['plan']['version']}"),
        ),
        (
            "heartbeats",
            Text(
                f"{heartbeats['alive']} alive, {heartbeats['expired']} expired "
                f"({', '.join(heartbeats['expired_agents']) or 'none'})"
            ),
        ),
        (
            "entries",
            Text(f"{summary['entries']['written']} written, {summary['entries']['read']} read"),
        ),
        (
            "store totals",
            Text(
                f"{stats.get('total_keys')} live keys, {stats.get('total_expired')} expired, "
                f"{stats.get('size_bytes')} bytes"
            ),
        ),
        ("elapsed", Text(f"{summary['elapsed_seconds']:.2f} s")),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    per_agent = Table(title="Agents", title_justify="left")
    for column in ("agent", "role", "writes", "reads", "suites", "passed", "failed"):
        per_agent.add_column(column, justify="left" if column in {"agent", "role"} else "right")
    for agent in summary["per_agent"]:
        per_agent.add_row(
            Text(agent["agent_id"], style="cyan"),
            agent["role"],
            *(str(agent[name]) for name in ("writes", "reads", "suites", "passed", "failed")),
        )
    console.print(per_agent)
    if not cleanup:
        prefix = summary["prefix"]
        console.print(Text(f"entries kept under {prefix}: lionagi-qe memory ls {prefix}"))
