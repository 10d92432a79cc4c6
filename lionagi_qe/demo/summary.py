"""What a demo run reports: per-agent tallies and the run's summary document."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AgentTally", "DemoSummary"]


@dataclass
class AgentTally:
    """What one agent did (which agent did what depends on scheduling)."""

    agent_id: str
    role: str
    writes: int = 0
    reads: int = 0
    claims: int = 0
    idle_polls: int = 0
    completed: int = 0
    failures: int = 0
    enqueued: int = 0
    suites: int = 0
    passed: int = 0
    failed: int = 0
    explored: int = 0
    cas_retries: int = 0
    reward: float = 0.0
    session_id: str | None = None

    def report(self) -> dict[str, int]:
        """An executor's totals, as merged into the fleet report."""
        return {
            "suites": self.suites,
            "passed": self.passed,
            "failed": self.failed,
            "failures": self.failures,
        }

    def as_dict(self) -> dict[str, Any]:
        """The tally as a JSON-ready dict."""
        return {
            "agent_id": self.agent_id,
            "role": self.role,
            "claims": self.claims,
            "idle_polls": self.idle_polls,
            "completed": self.completed,
            "failed_attempts": self.failures,
            "enqueued": self.enqueued,
            "writes": self.writes,
            "reads": self.reads,
            "explored": self.explored,
            "cas_retries": self.cas_retries,
            "reward": round(self.reward, 6),
        }


@dataclass
class DemoSummary:
    """The outcome of one demo run (see :meth:`as_dict` for the JSON form)."""

    fleet: str
    seed: int
    rounds: int
    run: int
    jobs_per_round: int
    jobs: dict[str, dict[str, int]]
    counters: dict[str, Any]
    coverage: dict[str, dict[str, Any]]
    learning: dict[str, Any]
    learning_stats: dict[str, Any]
    heartbeats: list[str]
    plan_version: int
    plan_status: str
    report: dict[str, Any]
    stats: dict[str, Any]
    removed_before: dict[str, int]
    agents: list[AgentTally] = field(default_factory=list)
    elapsed_seconds: float = 0.0

    def _count(self, role: str) -> int:
        return sum(1 for agent in self.agents if agent.role == role)

    def as_dict(self) -> dict[str, Any]:
        """The summary as one JSON-ready document."""
        counters = self.counters
        passed, failed = int(counters["tests_passed"]), int(counters["tests_failed"])
        return {
            "fleet": self.fleet,
            "prefixes": [f"aqe/{self.fleet}/", f"aqe/{self.fleet}.", f"aqe/patterns/{self.fleet}."],
            "queues": {stage: f"{self.fleet}:{stage}" for stage in self.jobs},
            "seed": self.seed,
            "rounds": self.rounds,
            "run": self.run,
            "agents": {
                "total": len(self.agents),
                "commander": self._count("fleet-commander"),
                "generators": self._count("test-generator"),
                "executors": self._count("test-executor"),
                "analysers": self._count("coverage-analyzer"),
            },
            "jobs": self.jobs,
            "results": {
                "suites": {
                    "generated": int(counters["suites_generated"]),
                    "executed": int(counters["suites_executed"]),
                    "dead": int(counters["dead"]),
                },
                "tests": {"total": passed + failed, "passed": passed, "failed": failed},
                "failed_attempts": int(counters["retries"]),
                "explored": sum(agent.explored for agent in self.agents),
                "coverage": self.coverage,
                "report": self.report,
            },
            "learning": self.learning,
            "learning_stats": self.learning_stats,
            "heartbeats": {"alive": len(self.heartbeats), "agents": self.heartbeats},
            "plan": {"status": self.plan_status, "version": self.plan_version},
            "cas_retries": sum(agent.cas_retries for agent in self.agents),
            "stats": self.stats,
            "removed_before": self.removed_before,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "per_agent": [agent.as_dict() for agent in self.agents],
        }
