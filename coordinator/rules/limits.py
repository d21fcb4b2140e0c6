"""Token-bucket rate limits, keyed by identity or by client address.

Each key has a bucket of `burst` tokens refilled at `rate` per second; a request takes one.
`take` returns 0 when the request may go on, else the seconds until a token is available
(the route answers 429 with that as Retry-After). State is in memory and bounded: when more
than `max_keys` keys are tracked, the least recently used are forgotten (a forgotten key
starts with a full bucket, which only ever errs towards letting a request through).
Rate limits need no durability: a restart refilling every bucket is harmless.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class RateLimiter:
    rate: float
    burst: float
    max_keys: int = 100_000
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict, repr=False)

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens from `key`'s bucket at time `now`; return 0.0 if allowed, else
        the wait in seconds (nothing is taken when refused)."""
        if self.rate <= 0:
            return 0.0
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (cost - tokens) / self.rate
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
