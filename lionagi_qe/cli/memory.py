"""``lionagi-qe memory``: read and write entries from the shell."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from lionagi_qe.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    DatabaseUrl,
    JsonOutput,
    RedisUrl,
    compact,
    emit_json,
    fail,
    reject_constant,
    stdout_console,
    with_memory,
)

memory_app = typer.Typer(help="Read and write the agent memory store.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``memory get|put|delete|ls|search|stats|cleanup`` to ``app``."""
    app.add_typer(memory_app, name="memory")


@memory_app.command("get")
def memory_get(
    key: Annotated[str, typer.Argument(help="The key, e.g. aqe/agent-1/result.")],
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Print the live value of KEY (exit 1 if there is none)."""
    entry = with_memory(database_url, redis_url, lambda memory: memory.get_entry(key))
    if entry is None:
        if json_output:
            emit_json(None)
            raise typer.Exit(EXIT_FAILURE)
        fail(f"no live entry for {key!r}")
    if json_output:
        emit_json(entry.value)
        return
    console = stdout_console()
    console.print(JSON.from_data(entry.value, ensure_ascii=False, default=str))
    expires = entry.expires_at.isoformat() if entry.expires_at is not None else "never"
    console.print(
        Text(
            f"partition {entry.partition} · version {entry.version} · "
            f"updated {entry.updated_at.isoformat()} · expires {expires}",
            style="dim",
        ),
        soft_wrap=True,
    )


@memory_app.command("put")
def memory_put(
    key: Annotated[str, typer.Argument(help="The key, e.g. aqe/agent-1/result.")],
    value: Annotated[str, typer.Argument(help='The value as JSON ("-" reads it from stdin).')],
    ttl: Annotated[
        float | None, typer.Option("--ttl", help="Seconds until the entry expires.")
    ] = None,
    partition: Annotated[str, typer.Option("--partition", help="Partition label.")] = "default",
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Store the JSON VALUE under KEY; print the entry's new version."""
    text = sys.stdin.read() if value == "-" else value
    try:
        parsed = json.loads(text, parse_constant=reject_constant)
    except ValueError as exc:
        fail(f"VALUE is not valid JSON: {exc}", EXIT_USAGE)
    version = with_memory(
        database_url,
        redis_url,
        lambda memory: memory.store(key, parsed, ttl=ttl, partition=partition),
    )
    if json_output:
        emit_json({"key": key, "version": version})
        return
    expiry = f", expires in {ttl:g}s" if ttl is not None else ""
    stdout_console().print(
        Text.assemble(
            ("stored ", "green"),
            (key, "cyan"),
            f" (version {version}, partition {partition}{expiry})",
        )
    )


@memory_app.command("delete")
def memory_delete(
    key: Annotated[str, typer.Argument(help="The key to delete.")],
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Delete KEY (a missing key is not an error)."""
    deleted = with_memory(database_url, redis_url, lambda memory: memory.delete(key))
    if json_output:
        emit_json({"key": key, "deleted": deleted})
    elif deleted:
        stdout_console().print(Text.assemble(("deleted ", "green"), (key, "cyan")))
    else:
        stdout_console().print(
            Text.assemble("no live entry for ", (key, "cyan"), ": nothing deleted")
        )


@memory_app.command("ls")
def memory_ls(
    prefix: Annotated[
        str | None, typer.Argument(help="Literal key prefix (default: the whole namespace).")
    ] = None,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """List live keys (starting with PREFIX), in code-point order."""
    keys = with_memory(database_url, redis_url, lambda memory: memory.list_keys(prefix))
    if json_output:
        emit_json(keys)
        return
    table = Table(caption=f"{len(keys)} key(s)", caption_justify="left")
    table.add_column("key", style="cyan", overflow="fold")
    for key in keys:
        table.add_row(Text(key))
    stdout_console().print(table)


@memory_app.command("search")
def memory_search(
    pattern: Annotated[str, typer.Argument(help="Glob (*, ?, \\[a-z], \\ escapes) or regex.")],
    regex: Annotated[bool, typer.Option("--regex", help="PATTERN is a Python regex.")] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=0, help="Return at most this many entries.")
    ] = None,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Print live entries whose keys match PATTERN (an anchored glob unless --regex)."""
    found = with_memory(
        database_url,
        redis_url,
        lambda memory: memory.search(pattern, regex=regex, limit=limit),
    )
    if json_output:
        emit_json(found)
        return
    table = Table(caption=f"{len(found)} match(es)", caption_justify="left")
    table.add_column("key", style="cyan", overflow="fold")
    table.add_column("value", overflow="ellipsis", no_wrap=True, max_width=80)
    for key, value in found.items():
        table.add_row(Text(key), Text(compact(value)))
    stdout_console().print(table)


@memory_app.command("stats")
def memory_stats(
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Show entry counts, partitions and sizes of the store."""
    stats = with_memory(database_url, redis_url, lambda memory: memory.get_stats())
    if json_output:
        emit_json(stats)
        return
    console = stdout_console()
    table = Table(title="Memory store", title_justify="left", show_header=False)
    table.add_column("stat", style="bold")
    table.add_column("value")
    for name, value in stats.items():
        if name != "partitions":
            table.add_row(Text(name), Text(value if isinstance(value, str) else compact(value)))
    console.print(table)
    partitions: dict[str, Any] = stats.get("partitions") or {}
    if partitions:
        by_partition = Table(title="Live entries per partition", title_justify="left")
        by_partition.add_column("partition", style="cyan")
        by_partition.add_column("live entries", justify="right")
        for name, count in sorted(partitions.items()):
            by_partition.add_row(Text(name), str(count))
        console.print(by_partition)


@memory_app.command("cleanup")
def memory_cleanup(
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    json_output: JsonOutput = False,
) -> None:
    """Physically remove expired entries; print how many went."""
    removed = with_memory(database_url, redis_url, lambda memory: memory.cleanup_expired())
    if json_output:
        emit_json({"removed": removed})
    else:
        stdout_console().print(f"removed {removed} expired entr{'y' if removed == 1 else 'ies'}")


# -- demo ------------------------------------------------------------------------------------
