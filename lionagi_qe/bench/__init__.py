"""``lionagi-qe bench``: the library beside the raw drivers, in one process and one run (§10).

Layout: :mod:`~lionagi_qe.bench.harness` (interleaving, the stall ticker, summaries),
:mod:`~lionagi_qe.bench.raw` (the raw-driver twins), one module per family of operations
(:mod:`~lionagi_qe.bench.memory`, :mod:`~lionagi_qe.bench.learning`,
:mod:`~lionagi_qe.bench.queue`), :mod:`~lionagi_qe.bench.servers` (throwaway databases and
prefixes), :mod:`~lionagi_qe.bench.runner` (one run) and :mod:`~lionagi_qe.bench.report`
(targets, the seed's table, rich tables, the PNG); :mod:`~lionagi_qe.bench.growth` measures
how costs move as tables grow. Nothing here imports the CLI.
"""

from lionagi_qe.bench.growth import GrowthOptions, run_growth
from lionagi_qe.bench.report import plot_ratios, render, render_growth
from lionagi_qe.bench.runner import (
    BACKENDS,
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    BenchOptions,
    run_bench,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_DATABASE_URL",
    "DEFAULT_REDIS_URL",
    "BenchOptions",
    "GrowthOptions",
    "plot_ratios",
    "render",
    "render_growth",
    "run_bench",
    "run_growth",
]
