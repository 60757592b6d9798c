"""Rate limiter, Retry-After parsing, redaction and request splitting, without a server."""
from __future__ import annotations

import email.utils
import threading

import pytest

from dicomvec.io.providers.nvclip import _even_chunks
from dicomvec.io.providers.openai_compatible import Redactor, _root_cause, parse_retry_after
from dicomvec.io.providers.rate_limit import RateLimiter, shared_rate_limiter


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(round(seconds, 6))


def test_rate_limiter_spaces_request_starts():
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock, sleep=clock.sleep)  # one per second
    waits = [limiter.acquire() for _ in range(4)]
    assert waits == [0.0, 1.0, 2.0, 3.0]  # all asked at once: queued a second apart
    clock.now += 10
    assert limiter.acquire() == 0.0  # after idle time the next request starts at once


def test_hold_delays_everyone_and_unlimited_never_waits():
    clock = FakeClock()
    limiter = RateLimiter(0, clock=clock, sleep=clock.sleep)
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    limiter.hold(5)
    assert limiter.acquire() == 5.0 and limiter.acquire() == 5.0
    clock.now += 6
    assert limiter.acquire() == 0.0


def test_shared_limiter_is_one_per_url_and_rate():
    a = shared_rate_limiter("http://x/v1", 40)
    assert shared_rate_limiter("http://x/v1", 40) is a
    assert shared_rate_limiter("http://x/v1", 20) is not a
    assert shared_rate_limiter("http://y/v1", 40) is not a


def test_retry_after_seconds_and_dates():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30)


def test_redactor_removes_key_and_bearer_tokens():
    redact = Redactor("nvapi-SECRET")
    text = redact("key nvapi-SECRET in 'Authorization': 'Bearer abc.def' and Bearer xyz")
    assert "nvapi-SECRET" not in text and "abc.def" not in text and "xyz" not in text
    assert Redactor(None)("plain") == "plain"
    assert len(redact("x" * 5000)) == 500


def test_root_cause_names_the_innermost_error():
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise RuntimeError("wrapper with url") from inner
    except RuntimeError as outer:
        assert _root_cause(outer) == "ConnectionRefusedError: [Errno 111] Connection refused"


@pytest.mark.parametrize("n, limit, sizes", [
    (0, 64, []), (1, 64, [1]), (64, 64, [64]), (65, 64, [33, 32]), (150, 64, [50, 50, 50]),
    (10, 4, [4, 3, 3])])
def test_even_chunks(n, limit, sizes):
    chunks = _even_chunks(list(range(n)), limit)
    assert [len(c) for c in chunks] == sizes
    assert [x for c in chunks for x in c] == list(range(n))
