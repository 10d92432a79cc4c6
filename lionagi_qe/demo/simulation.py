"""The demo's simulated world: modules, test strategies, suites and their outcomes (no I/O).

Everything random is drawn from :class:`random.Random` seeded with a string built from the run's
seed and *what* is being decided (round, job index, attempt), never from which agent happens to
do it, so the outcomes of a run do not depend on scheduling.

The hidden truth the fleet has to learn: how likely a test written with each strategy is to
cover a new branch of each kind of module (:data:`QUALITY`), and how often a suite written that
way breaks its environment when run (:data:`FLAKE_RATE`). ``property-based`` is best on data
modules, ``boundary-values`` on APIs, ``mutation`` on UIs (but it is flaky), ``random`` is
worst everywhere.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel

__all__ = [
    "BRANCHES_PER_MODULE",
    "FLAKE_RATE",
    "MODULES",
    "QUALITY",
    "STRATEGIES",
    "GeneratedSuite",
    "GeneratedTest",
    "SuiteRun",
    "choose_strategy",
    "epsilon_for",
    "generate_suite",
    "is_flaky_attempt",
    "module_for",
    "reward_for",
    "rng",
    "run_suite",
]

#: The system under test: module name → kind (the learning state).
MODULES: dict[str, str] = {
    "auth": "api",
    "billing": "data",
    "checkout": "ui",
    "inventory": "data",
    "profile": "ui",
    "search": "api",
    "reports": "data",
}
#: The actions a test generator chooses from.
STRATEGIES = ("boundary-values", "property-based", "mutation", "random")
#: Chance that one generated test covers a branch, by module kind and strategy.
QUALITY: dict[str, dict[str, float]] = {
    "api": {"boundary-values": 0.85, "property-based": 0.6, "mutation": 0.55, "random": 0.25},
    "data": {"boundary-values": 0.5, "property-based": 0.9, "mutation": 0.6, "random": 0.2},
    "ui": {"boundary-values": 0.45, "property-based": 0.35, "mutation": 0.8, "random": 0.3},
}
#: Chance that an execution attempt of a suite breaks its environment (the job fails and is
#: retried; after the last attempt it is dead).
FLAKE_RATE: dict[str, float] = {
    "boundary-values": 0.1,
    "property-based": 0.15,
    "mutation": 0.35,
    "random": 0.05,
}
#: Chance that a generated test expects a wrong result: a defect the executor finds.
DEFECT_RATE = 0.12
#: Branches in each module (coverage is the share of them some test reached).
BRANCHES_PER_MODULE = 24
#: The value an untried action is assumed to have (optimism makes every action tried once).
OPTIMISTIC_Q = 1.0
#: Reward of a suite whose execution died after its last attempt.
DEAD_REWARD = -0.5
#: Reward lost per extra execution attempt a suite needed.
RETRY_PENALTY = 0.1


def rng(seed: int, *parts: object) -> random.Random:
    """A generator for one decision: seeded by the run's seed and what is decided."""
    return random.Random(":".join([str(seed), *map(str, parts)]))


def module_for(round_number: int, index: int, per_round: int) -> str:
    """The module the ``index``-th generation job of a round is about (a fixed rotation)."""
    names = sorted(MODULES)
    return names[((round_number - 1) * per_round + index) % len(names)]


def epsilon_for(visits: int) -> float:
    """Exploration rate for a state already visited ``visits`` times: 0.3, decaying to 0.05."""
    return max(0.05, 0.3 / (1.0 + visits / 6.0))


def choose_strategy(
    q_values: Mapping[str, float], visits: int, draw: random.Random
) -> tuple[str, bool]:
    """Epsilon-greedy over :data:`STRATEGIES`; return the strategy and whether it explored.

    Untried strategies count as :data:`OPTIMISTIC_Q`; ties go to the first in
    :data:`STRATEGIES` order, so the choice depends only on the values and the draw.
    """
    if draw.random() < epsilon_for(visits):
        return draw.choice(STRATEGIES), True

    def value(name: str) -> tuple[float, int]:
        return q_values.get(name, OPTIMISTIC_Q), -STRATEGIES.index(name)

    return max(STRATEGIES, key=value), False


class GeneratedTest(BaseModel):
    """One simulated test: does ``sum(inputs)`` equal ``expected``? It reaches ``branch``."""

    name: str
    inputs: list[int]
    expected: int
    branch: int | None


class GeneratedSuite(BaseModel):
    """A suite of generated tests for one module, written with one strategy."""

    round: int
    index: int
    module: str
    kind: str
    strategy: str
    explored: bool
    generator: str
    tests: list[GeneratedTest]


def generate_suite(
    seed: int,
    round_number: int,
    index: int,
    module: str,
    strategy: str,
    *,
    explored: bool,
    generator: str,
) -> GeneratedSuite:
    """Write the suite for one generation job (same arguments → same tests)."""
    kind = MODULES[module]
    draw = rng(seed, "suite", round_number, index, strategy)
    tests = []
    for number in range(1, draw.randint(4, 8) + 1):
        inputs = [draw.randint(-50, 50) for _ in range(draw.randint(2, 4))]
        wrong = draw.random() < DEFECT_RATE
        expected = sum(inputs) + (draw.choice((-1, 1)) if wrong else 0)
        covers = draw.random() < QUALITY[kind][strategy]
        branch = draw.randrange(BRANCHES_PER_MODULE) if covers else None
        tests.append(
            GeneratedTest(
                name=f"test_{module}_{strategy.replace('-', '_')}_{number}",
                inputs=inputs,
                expected=expected,
                branch=branch,
            )
        )
    return GeneratedSuite(
        round=round_number,
        index=index,
        module=module,
        kind=kind,
        strategy=strategy,
        explored=explored,
        generator=generator,
        tests=tests,
    )


def is_flaky_attempt(seed: int, round_number: int, index: int, attempt: int, strategy: str) -> bool:
    """Whether execution attempt ``attempt`` of a suite breaks its environment."""
    return rng(seed, "flake", round_number, index, attempt).random() < FLAKE_RATE[strategy]


@dataclass(frozen=True, slots=True)
class SuiteRun:
    """What executing a suite found."""

    passed: int
    failed: int
    failures: list[str]
    branches: list[int]

    @property
    def total(self) -> int:
        """Tests run."""
        return self.passed + self.failed


def run_suite(suite: GeneratedSuite) -> SuiteRun:
    """Run a suite: a test passes when its inputs add up to what it expects."""
    failures = [test.name for test in suite.tests if sum(test.inputs) != test.expected]
    branches = sorted({test.branch for test in suite.tests if test.branch is not None})
    return SuiteRun(
        passed=len(suite.tests) - len(failures),
        failed=len(failures),
        failures=failures,
        branches=branches,
    )


def reward_for(tests: Sequence[GeneratedTest] | None, attempts: int) -> float:
    """The reward of a strategy choice: the share of its tests that reached a branch, less
    :data:`RETRY_PENALTY` per extra attempt; :data:`DEAD_REWARD` when the suite never ran
    (``tests`` None)."""
    if tests is None:
        return DEAD_REWARD
    covering = sum(1 for test in tests if test.branch is not None)
    return round(covering / max(len(tests), 1) - RETRY_PENALTY * (attempts - 1), 6)
