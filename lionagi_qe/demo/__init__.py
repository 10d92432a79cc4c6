"""A simulated QE fleet working through the store and learning as it goes (``lionagi-qe demo``).

No language model is involved: the agents are small coroutines that coordinate only through
the store, the way a real fleet does — a :class:`~lionagi_qe.WorkQueue` pipeline (generate →
execute → analyse), memory entries (plan hand-offs with compare-and-set, counters, TTL
heartbeats, :class:`~lionagi_qe.AgentMemory` results and learned patterns) — and learn through
the Q-learning store (:class:`~lionagi_qe.DatabaseManager`). See :mod:`lionagi_qe.demo.fleet`
for the roles and :mod:`lionagi_qe.demo.simulation` for the simulated world.

Deterministic for a given seed, options and learning history (the same number of earlier runs
of the fleet): the modules, the strategies chosen, the suites, test outcomes, failed attempts,
dead jobs, rewards, coverage, Q-values and job counts. Scheduling decides the rest: which agent
did which job (the per-agent table), reads, compare-and-set retries and the elapsed time.

A run first deletes what the previous run of its fleet left (entries under its prefixes and
every job of its queues) and keeps the learning data (Q-values, rewards, patterns, sessions):
run it again and it starts from what it learned.
"""

from lionagi_qe.demo.fleet import (
    DEFAULT_FLEET,
    STAGES,
    Progress,
    clear_demo_data,
    fleet_prefixes,
    run_demo,
)
from lionagi_qe.demo.simulation import GeneratedSuite, GeneratedTest
from lionagi_qe.demo.summary import AgentTally, DemoSummary

#: The default fleet's own key prefix.
DEMO_PREFIX = f"aqe/{DEFAULT_FLEET}/"

__all__ = [
    "DEFAULT_FLEET",
    "DEMO_PREFIX",
    "STAGES",
    "AgentTally",
    "DemoSummary",
    "GeneratedSuite",
    "GeneratedTest",
    "Progress",
    "clear_demo_data",
    "fleet_prefixes",
    "run_demo",
]
