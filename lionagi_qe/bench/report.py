"""The report: §10 targets, the seed's expectations, rich tables and a PNG of the ratios."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["SEED", "plot_ratios", "render", "render_growth", "seed_rows", "targets"]

#: The seed's "Expected Performance (Approximate)" table:
#: (backend, seed operation, seed throughput, seed latency, our operation).
SEED: tuple[tuple[str, str, str, str, str], ...] = (
    ("postgres", "Write", "10-50 ops/s", "20-100 ms", "store"),
    ("postgres", "Read", "50-200 ops/s", "5-20 ms", "retrieve"),
    ("postgres", "Search (50 keys)", "N/A", "< 1 s", "search"),
    ("postgres", "Concurrent (50 ops)", "N/A", "2-5 s", "store_concurrent"),
    ("redis", "Write", "100-500 ops/s", "2-10 ms", "store"),
    ("redis", "Read", "200-1000 ops/s", "1-5 ms", "retrieve"),
    ("redis", "Search (50 keys)", "N/A", "< 0.5 s", "search"),
    ("redis", "Concurrent (50 ops)", "N/A", "1-2 s", "store_concurrent"),
)


def _by_key(results: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    return {(r["backend"], r["operation"]): r for r in results}


def _side(r: Mapping[str, Any], side: str) -> str:
    s = r[side]
    if r["concurrent"]:
        # The seed times a batch of 50 concurrent operations.
        return f"{s['ops_per_s']:,.0f} ops/s · 50 ops in {50 / s['ops_per_s'] * 1e3:.1f} ms"
    return f"{s['ops_per_s']:,.0f} ops/s · p50 {s['p50_ms']:.2f} ms"


def seed_rows(results: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The seed's expectations beside what both sides measured (backends that ran)."""
    found = _by_key(results)
    rows = []
    for backend, operation, throughput, latency, ours in SEED:
        r = found.get((backend, ours))
        if r is None:
            continue
        rows.append(
            {
                "backend": backend,
                "operation": operation,
                "seed_throughput": throughput,
                "seed_latency": latency,
                "measured_as": r["name"],
                "ours": _side(r, "ours"),
                "raw": _side(r, "raw"),
            }
        )
    return rows


def targets(results: Sequence[Mapping[str, Any]], store_size: int) -> list[dict[str, Any]]:
    """The SPEC §10 targets that the run measured, each with its value and pass/fail."""
    found = _by_key(results)
    rows: list[tuple[str, float, str, bool]] = []

    def ratio(backend: str, operation: str, limit: float, what: str) -> None:
        r = found.get((backend, operation))
        if r is not None:
            rows.append((f"{backend} {what} ≤ {limit}x raw", r["ratio"], "x", r["ratio"] <= limit))

    ratio("postgres", "store", 1.3, "store")
    ratio("postgres", "retrieve", 1.5, "retrieve")
    ratio("cached", "cache_hit", 1.3, "cache hit")
    many = found.get(("postgres", "store_many"))
    if many is not None:
        rate = many["ours"]["ops_per_s"]
        rows.append(("postgres store_many ≥ 50,000 entries/s", rate, "entries/s", rate >= 50_000))
    search = found.get(("postgres", "search"))
    if search is not None:
        p50 = search["ours"]["p50_ms"]
        rows.append((f"postgres search 50 of {store_size:,} < 2 ms (p50)", p50, "ms", p50 < 2))
    for operation in ("store_concurrent", "retrieve_concurrent"):
        r = found.get(("postgres", operation))
        if r is not None:
            speed = r["ours"]["ops_per_s"] / r["raw"]["ops_per_s"]
            rows.append((f"postgres {r['name']}: beats raw per-call", speed, "x raw", speed > 1))
    if results:
        busy = max(r["ours"]["busy_stall_ms"] for r in results)
        rows.append(("event-loop stall ≤ 10 ms (ours, CPU-busy)", busy, "ms", busy <= 10))
    return [{"target": t, "measured": m, "unit": u, "passed": bool(p)} for t, m, u, p in rows]


def _ratio_cell(ratio: float) -> Text:
    style = "bold green" if ratio <= 1.1 else "bold yellow" if ratio <= 1.5 else "bold red"
    return Text(f"{ratio:.2f}x", style=style)


def results_table(results: Iterable[Mapping[str, Any]]) -> Table:
    """One row per operation: the ratio first, then each side's rate and latencies."""
    table = Table(title="lionagi_qe vs the raw driver (interleaved, same run, same servers)")
    table.add_column("backend", no_wrap=True)
    table.add_column("operation", no_wrap=True)
    table.add_column("ratio", justify="right")
    table.add_column("ours /s", justify="right")
    table.add_column("raw /s", justify="right")
    table.add_column("ours p50/p99 ms", justify="right", no_wrap=True)
    table.add_column("raw p50/p99 ms", justify="right", no_wrap=True)
    table.add_column("stall ms", justify="right", no_wrap=True)
    backend = None
    for r in results:
        if backend is not None and r["backend"] != backend:
            table.add_section()
        backend = r["backend"]
        ours, raw = r["ours"], r["raw"]
        table.add_row(
            r["backend"],
            r["name"],
            _ratio_cell(r["ratio"]),
            f"{ours['ops_per_s']:,.0f}",
            f"{raw['ops_per_s']:,.0f}",
            f"{ours['p50_ms']:.3f} / {ours['p99_ms']:.3f}",
            f"{raw['p50_ms']:.3f} / {raw['p99_ms']:.3f}",
            f"{ours['stall_ms']:.1f} ({ours['busy_stall_ms']:.1f})",
        )
    return table


def targets_table(rows: Iterable[Mapping[str, Any]]) -> Table:
    """Targets with their measured value and PASS/FAIL."""
    table = Table(title="SPEC §10 targets")
    table.add_column("target")
    table.add_column("measured", justify="right")
    table.add_column("")
    for t in rows:
        unit, value = t["unit"], t["measured"]
        shown = f"{value:,.0f} {unit}" if unit == "entries/s" else f"{value:.2f} {unit}"
        table.add_row(t["target"], shown, "[green]PASS[/]" if t["passed"] else "[red]FAIL[/]")
    return table


def seed_table(rows: Iterable[Mapping[str, str]]) -> Table:
    """The seed's expectations beside both sides' numbers."""
    table = Table(title="The seed's expected performance (integration-tests README) beside ours")
    for column in ("backend", "seed operation", "seed /s", "seed latency", "ours", "raw"):
        table.add_column(column, no_wrap=column != "ours" and column != "raw")
    for row in rows:
        table.add_row(
            row["backend"],
            row["operation"],
            row["seed_throughput"],
            row["seed_latency"],
            row["ours"],
            row["raw"],
        )
    return table


def render(console: Console, report: Mapping[str, Any]) -> None:
    """Print the results, the targets (full runs only) and the seed's table."""
    env, config = report["environment"], report["config"]
    named = (("PostgreSQL", "postgresql"), ("Redis", "redis"))
    servers = " · ".join(f"{name} {env[key]}" for name, key in named if key in env)
    console.print(
        f"{servers + ' · ' if servers else ''}Python {env['python']} · SQLAlchemy "
        f"{env['sqlalchemy']} · asyncpg {env['asyncpg']} · redis-py {env['redis_py']} · "
        f"{env['cpus']} CPUs · ops={config['ops']} repeat={config['repeats']} "
        f"size={config['store_size']:,} batch={config['batch']:,}"
        + (" · SMOKE RUN (sizes too small to mean anything)" if config["smoke"] else "")
    )
    console.print(results_table(report["results"]))
    console.print(
        "ratio: our time per item / the raw driver's (mean; concurrent rows: raw throughput / "
        "ours). < 1 is faster than raw. stall: worst event-loop lateness during our calls, "
        "wall (CPU-busy part)."
    )
    twins = dict.fromkeys(f"{r['backend']}: {r['raw_twin']}" for r in report["results"])
    console.print("raw twins: " + "; ".join(twins))
    if report["targets"]:
        console.print(targets_table(report["targets"]))
    if report["seed"]:
        console.print(seed_table(report["seed"]))


def render_growth(console: Console, report: Mapping[str, Any]) -> None:
    """Print the growth results and the cleanup-under-load figures."""
    config, env = report["config"], report["environment"]
    sizes = ", ".join(f"{n:,}" for n in config["sizes"])
    console.print(
        f"PostgreSQL {env['postgresql']} · asyncpg {env['asyncpg']} · sizes {sizes} · "
        f"ops={config['ops']} repeat={config['repeats']}"
        + (" · SMOKE RUN (sizes too small to mean anything)" if config["smoke"] else "")
    )
    console.print(results_table(report["results"]))
    cleanup = report["cleanup"]
    table = Table(
        title=f"cleanup_expired of {cleanup['expired']:,} expired entries "
        f"(batches of {cleanup['batch']:,}) beside a writer storing in a loop"
    )
    for column in ("writer", "calls", "p50 ms", "p99 ms", "max ms", "stall ms (busy)"):
        table.add_column(column, justify="left" if column == "writer" else "right")
    for label, key in (("alone", "writer_alone"), ("during cleanup", "writer_during_cleanup")):
        w = cleanup[key]
        table.add_row(
            label,
            f"{w['calls']:,}",
            f"{w['p50_ms']:.2f}",
            f"{w['p99_ms']:.2f}",
            f"{w['max_ms']:.2f}",
            f"{w['stall_ms']:.1f} ({w['busy_stall_ms']:.1f})",
        )
    console.print(table)
    console.print(
        f"cleanup removed {cleanup['removed']:,} in {cleanup['seconds']:.2f} s "
        f"({cleanup['removed_per_s']:,.0f} entries/s)"
    )


def plot_ratios(report: Mapping[str, Any], path: Path) -> None:
    """Draw each operation's ratio to the raw driver as a horizontal bar chart (PNG).

    Raises:
        RuntimeError: matplotlib is not installed (the ``bench`` extra).
    """
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'lionagi-qe[bench]'") from exc
    results = list(report["results"])
    labels = [f"{r['backend']}: {r['name']}" for r in results]
    ratios = [r["ratio"] for r in results]
    backends = sorted({r["backend"] for r in results})
    palette = plt.get_cmap("tab10")
    colors = [palette(backends.index(r["backend"]) % 10) for r in results]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(results) + 1.5))
    positions = list(range(len(results)))[::-1]
    # Bars grow from parity: right of 1x is slower than raw, left of it faster.
    ax.barh(positions, [ratio - 1.0 for ratio in ratios], left=1.0, color=colors)
    ax.set_yticks(positions, labels, fontsize=8)
    # Ratios are multiplicative: on a log axis 0.5x and 2x sit equally far from parity.
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlim(min([*ratios, 1.0]) / 1.25, max([*ratios, 1.0]) * 1.3)
    for position, ratio in zip(positions, ratios, strict=True):
        faster = ratio < 1.0  # label beyond the bar's end, on whichever side it grows
        label = f"{ratio:.2f}x " if faster else f" {ratio:.2f}x"
        ax.text(ratio, position, label, va="center", ha="right" if faster else "left", fontsize=7)
    ax.set_xlabel("time per item, ours / raw driver (1.0 = parity, lower is better)")
    title = "lionagi_qe vs raw drivers"
    if report["config"].get("smoke"):
        title += " (smoke run: not a measurement)"
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
