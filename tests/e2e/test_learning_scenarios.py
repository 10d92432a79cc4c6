"""The original's cross-instance scenario, with simulated agents and no language model (SPEC §5).

One instance of an agent type learns over episodes in a simulated test-generation environment,
storing Q-values, trajectories, rewards, sessions, pattern use and its state. A second instance
of the same agent type — another process in real life: here another ``DatabaseManager`` with a
pool of its own — starts with nothing in memory, picks the best known actions from what the first
stored, and continues learning from there.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass, field

import pytest

from lionagi_qe import DatabaseManager

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.postgres]

DIALECTS = [
    pytest.param("aqe_database_url", id="postgres"),
    pytest.param("aqe_sqlite_url", id="sqlite"),
]
STRATEGIES = ("unit", "property-based", "mutation", "integration")
MODULES = ("auth", "billing", "search", "upload", "reports", "notify")
STEPS_PER_EPISODE = 3
ALPHA, GAMMA = 0.5, 0.5
EPISODES = 48


def digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


class SimulatedEnvironment:
    """Modules in a ring, visited three at a time; each module has one strategy that finds
    bugs, the others find little.

    A state is (module, step), so it is Markov: the strategy does not change where the episode
    goes, and the best action of a state is the module's best strategy. Rewards are
    deterministic apart from small seeded noise; the agent has to discover them.
    """

    def __init__(self, salt: str, rng: random.Random) -> None:
        self.salt = salt
        self.rng = rng
        self.best = {m: STRATEGIES[(i * 3) % len(STRATEGIES)] for i, m in enumerate(MODULES)}

    def state_hash(self, module: str, step: int) -> str:
        return digest(self.salt, "module", module, str(step))

    def step(self, module: str, strategy: str) -> tuple[float, str]:
        """(reward, next module)."""
        # With these rewards and GAMMA, a wrong strategy's first estimate (at most
        # ALPHA * (1.5 + GAMMA * 15) = 4.5) stays below the right one's (at least 4.75), however
        # far the next state's value has grown: after one try of each, the greedy choice is right.
        base = 10.0 if strategy == self.best[module] else 1.0
        reward = base + self.rng.uniform(-0.5, 0.5)
        return reward, MODULES[(MODULES.index(module) + 1) % len(MODULES)]


@dataclass
class SimulatedAgent:
    """An epsilon-greedy learner that keeps nothing in memory: everything is in the store."""

    db: DatabaseManager
    agent_type: str
    instance_id: str
    env: SimulatedEnvironment
    rng: random.Random
    epsilon: float
    episodes: int = 0
    actions: int = 0
    successes: int = 0
    total_reward: float = 0.0
    visited: set[str] = field(default_factory=set)

    async def choose(self, state: str) -> str:
        """A strategy this agent type never tried here, else epsilon-greedy on stored Q."""
        known = await self.db.get_all_q_values_for_state(self.agent_type, state)
        tried = {item["action_data"]["strategy"] for item in known}
        untried = [strategy for strategy in STRATEGIES if strategy not in tried]
        if untried:
            return self.rng.choice(untried)
        if self.rng.random() < self.epsilon:
            return self.rng.choice(STRATEGIES)
        return str(known[0]["action_data"]["strategy"])

    async def max_q(self, state: str) -> float:
        best = await self.db.get_best_action(self.agent_type, state)
        return float(best["q_value"]) if best else 0.0

    async def run_episode(self, start: str) -> float:
        session_id = await self.db.start_session(
            self.agent_type, f"{self.instance_id}-episode-{self.episodes}", environment="test"
        )
        module, episode_reward = start, 0.0
        for step in range(STEPS_PER_EPISODE):
            state = self.env.state_hash(module, step)
            strategy = await self.choose(state)
            action = digest("strategy", strategy)
            reward, next_module = self.env.step(module, strategy)
            done = step == STEPS_PER_EPISODE - 1
            next_state = self.env.state_hash(next_module, step + 1)
            next_max = 0.0 if done else await self.max_q(next_state)
            await self.db.update_q_value(
                self.agent_type,
                state,
                action,
                reward,
                next_max,
                ALPHA,
                GAMMA,
                state_data={"module": module, "step": step},
                action_data={"strategy": strategy},
            )
            trajectory_id = await self.db.store_trajectory(
                self.agent_type,
                state,
                action,
                reward,
                next_state,
                done,
                session_id=session_id,
                agent_instance_id=self.instance_id,
                step_number=step,
                state_data={"module": module},
                action_data={"strategy": strategy},
                next_state_data={"module": next_module},
            )
            await self.db.record_reward(
                self.agent_type, state, action, reward, "immediate", session_id, trajectory_id
            )
            success = reward > 5
            await self.db.record_pattern_use(
                self.agent_type, f"strategy:{strategy}", success=success, reward=reward
            )
            self.visited.add(module)
            self.actions += 1
            self.successes += success
            episode_reward += reward
            module = next_module
        await self.db.end_session(session_id)
        self.episodes += 1
        self.total_reward += episode_reward
        await self.db.update_agent_state(
            self.agent_type,
            self.instance_id,
            total_episodes=self.episodes,
            total_actions=self.actions,
            successful_actions=self.successes,
            total_reward=self.total_reward,
            epsilon=self.epsilon,
            learning_rate=ALPHA,
            discount_factor=GAMMA,
        )
        return episode_reward


@pytest.mark.parametrize("url_fixture", DIALECTS)
async def test_a_second_instance_continues_from_what_the_first_learned(
    url_fixture: str, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue(url_fixture)
    agent_type = f"scenario-generator-{uuid.uuid4().hex[:12]}"
    salt = uuid.uuid4().hex
    rng = random.Random(2024)
    env = SimulatedEnvironment(salt, rng)

    first_db = DatabaseManager(url, min_connections=1, max_connections=4)
    try:
        assert await first_db.register_agent_type(agent_type, "simulated test generator")
        first = SimulatedAgent(first_db, agent_type, "gen-1", env, rng, epsilon=0.4)
        for episode in range(EPISODES):
            await first.run_episode(MODULES[episode % len(MODULES)])
        assert first.visited == set(MODULES)
    finally:
        await first_db.close()

    second_db = DatabaseManager(url, min_connections=1, max_connections=4)
    try:
        # A new instance, nothing in memory: it exploits what the first instance stored.
        states = [(module, step) for module in MODULES for step in range(STEPS_PER_EPISODE)]
        before = {}
        for module, step in states:
            best = await second_db.get_best_action(agent_type, env.state_hash(module, step))
            assert best is not None, f"nothing learned for {module} step {step}"
            assert best["action_data"] == {"strategy": env.best[module]}, (module, step)
            assert best["action_hash"] == digest("strategy", env.best[module])
            assert type(best["q_value"]) is float and best["visit_count"] >= 1
            before[module, step] = best
        second = SimulatedAgent(second_db, agent_type, "gen-2", env, random.Random(7), epsilon=0.0)
        greedy = [await second.run_episode(module) for module in MODULES]
        # Always the best strategy: every step earns about 10.
        assert all(reward > 3 * 9.4 for reward in greedy), greedy
        assert second.successes == second.actions == len(MODULES) * STEPS_PER_EPISODE

        # ...and it kept learning on top of the first instance's values.
        for module, step in states:
            after = await second_db.get_best_action(agent_type, env.state_hash(module, step))
            assert after is not None
            assert after["action_hash"] == before[module, step]["action_hash"]
            assert after["visit_count"] == before[module, step]["visit_count"] + 1

        gen1 = await second_db.get_agent_state(agent_type, "gen-1")
        gen2 = await second_db.get_agent_state(agent_type, "gen-2")
        assert gen1 is not None and gen2 is not None
        steps = EPISODES * STEPS_PER_EPISODE
        assert gen1["total_episodes"] == EPISODES and gen1["total_actions"] == steps
        assert gen2["success_rate"] == 1.0 and gen2["epsilon"] == 0.0
        assert gen1["total_reward"] == pytest.approx(first.total_reward)

        stats = await second_db.get_learning_statistics(agent_type)
        greedy_steps = len(MODULES) * STEPS_PER_EPISODE
        assert stats["trajectories"]["count"] == steps + greedy_steps
        assert stats["trajectories"]["agent_instances"] == 2
        assert stats["trajectories"]["episodes_completed"] == EPISODES + len(MODULES)
        assert stats["sessions"]["completed"] == EPISODES + len(MODULES)
        assert stats["sessions"]["active"] == 0
        assert stats["q_values"]["states"] == len(states)
        assert stats["q_values"]["count"] == len(states) * len(STRATEGIES)
        assert stats["rewards"]["count"] == steps + greedy_steps
        assert stats["patterns"]["usage_count"] == steps + greedy_steps
        assert stats["agents"]["instances"] == 2
        recent = await second_db.get_recent_trajectories(agent_type, 3, agent_instance_id="gen-2")
        assert [step["step_number"] for step in recent] == [2, 1, 0]
        assert recent[0]["done"] is True
    finally:
        await second_db.close()
