"""The cache-aside tier: :class:`CachedMemory` (database truth, Redis cache) and its breaker."""

from lionagi_qe.cache.breaker import BreakerState, CircuitBreaker
from lionagi_qe.cache.cached import CachedMemory

__all__ = ["BreakerState", "CachedMemory", "CircuitBreaker"]
