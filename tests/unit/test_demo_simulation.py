"""The demo's simulated world and its epsilon-greedy choice: pure functions, no I/O."""

from __future__ import annotations

import random

from lionagi_qe.demo import simulation as sim


class _NeverExplore(random.Random):
    def random(self) -> float:
        return 0.999


class _AlwaysExplore(random.Random):
    def random(self) -> float:
        return 0.0


def test_untried_strategies_come_first_then_the_best_value() -> None:
    draw = _NeverExplore()
    assert sim.choose_strategy({}, 0, draw) == ("boundary-values", False)
    tried = {"boundary-values": 0.9, "property-based": 0.2}
    assert sim.choose_strategy(tried, 2, draw) == ("mutation", False)  # untried: optimistic
    everything = {"boundary-values": 0.3, "property-based": 0.8, "mutation": 0.5, "random": 0.1}
    assert sim.choose_strategy(everything, 40, draw) == ("property-based", False)


def test_exploration_picks_any_strategy_and_decays() -> None:
    strategy, explored = sim.choose_strategy({"random": 5.0}, 0, _AlwaysExplore(1))
    assert explored and strategy in sim.STRATEGIES
    assert sim.epsilon_for(0) == 0.3
    assert sim.epsilon_for(6) < sim.epsilon_for(0)
    assert sim.epsilon_for(10_000) == 0.05


def test_outcomes_depend_only_on_the_seed_and_what_is_decided() -> None:
    one = sim.generate_suite(7, 2, 3, "billing", "property-based", explored=False, generator="a")
    two = sim.generate_suite(7, 2, 3, "billing", "property-based", explored=False, generator="b")
    assert one.tests == two.tests
    other = sim.generate_suite(8, 2, 3, "billing", "property-based", explored=False, generator="a")
    assert other.tests != one.tests
    assert 4 <= len(one.tests) <= 8 and one.kind == "data"
    flaky = [sim.is_flaky_attempt(7, 1, i, 1, "mutation") for i in range(200)]
    assert flaky == [sim.is_flaky_attempt(7, 1, i, 1, "mutation") for i in range(200)]
    assert 0.2 < sum(flaky) / len(flaky) < 0.5


def test_run_and_reward() -> None:
    suite = sim.generate_suite(7, 1, 0, "auth", "boundary-values", explored=False, generator="g")
    run = sim.run_suite(suite)
    assert run.total == len(suite.tests)
    assert run.failed == sum(1 for t in suite.tests if sum(t.inputs) != t.expected)
    assert run.branches == sorted({t.branch for t in suite.tests if t.branch is not None})
    covering = sum(1 for t in suite.tests if t.branch is not None) / len(suite.tests)
    assert sim.reward_for(suite.tests, 1) == round(covering, 6)
    assert sim.reward_for(suite.tests, 3) == round(covering - 0.2, 6)
    assert sim.reward_for(None, 3) == sim.DEAD_REWARD


def test_modules_rotate_through_every_module() -> None:
    seen = {sim.module_for(r, i, 4) for r in (1, 2) for i in range(4)}
    assert seen == set(sim.MODULES)
