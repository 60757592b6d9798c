"""A client-side request rate limit shared by every provider instance in one worker process.

``RateLimiter(per_minute)`` spaces request starts at least ``60 / per_minute`` seconds apart
(no bursts), across threads. ``hold(seconds)`` makes every caller wait that long, used when the
server answers 429 with ``Retry-After``: the other requests in flight would be refused too.

``shared_rate_limiter(key, per_minute)`` returns one limiter per (key, rate) in the process, so
all DoFn instances of a Beam SDK worker process draw from the same budget.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Optional, Tuple


class RateLimiter:
    """At most ``per_minute`` request starts per minute; ``per_minute <= 0`` means unlimited."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.per_minute = float(per_minute or 0)
        self.interval = 60.0 / self.per_minute if self.per_minute > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_start = 0.0  # earliest monotonic time the next request may start
        self._hold_until = 0.0  # set by hold(): nobody starts before this

    def acquire(self) -> float:
        """Block until a request may start; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next_start, self._hold_until)
            self._next_start = start + self.interval
        wait = start - now
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

    def hold(self, seconds: float) -> None:
        """Make every later ``acquire`` wait until ``seconds`` from now (server asked us to)."""
        if seconds <= 0:
            return
        with self._lock:
            self._hold_until = max(self._hold_until, self._clock() + seconds)


_SHARED: Dict[Tuple[str, float], RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_rate_limiter(key: str, per_minute: Optional[float]) -> RateLimiter:
    """The process-wide limiter for ``key`` (e.g. the endpoint URL) at ``per_minute``."""
    rate = float(per_minute or 0)
    with _SHARED_LOCK:
        limiter = _SHARED.get((key, rate))
        if limiter is None:
            limiter = _SHARED[(key, rate)] = RateLimiter(rate)
        return limiter
