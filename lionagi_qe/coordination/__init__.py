"""Coordination primitives for agent fleets: a work queue and the agent-side memory view."""

from lionagi_qe.coordination.agent_memory import AgentMemory
from lionagi_qe.coordination.queue import Job, WorkQueue

__all__ = ["AgentMemory", "Job", "WorkQueue"]
