"""Read-ahead inside a worker: the next objects are fetched while the current one is decoded.

Against a real bucket each read waits for the first byte (S3: 100-200 ms) and then for the
transfer (~85 MB/s per connection: ~0.2 s for a 15 MB MIMIC object), while decoding it takes
~15 ms of CPU. Read one after the other, a worker waits most of the time. ``ReadAhead`` is a
window over the elements of ONE bundle, in arrival order:

* when an element arrives its fetch starts at once on a thread pool (``ObjectFetcher``);
* elements leave the window in arrival order, each with its bytes or the fetch's exception,
  once the window would otherwise exceed ``max_items`` elements or ``max_bytes`` (expected)
  bytes, and all of them at the end of the bundle (``drain``, from ``finish_bundle``);
* memory: at most ``max_bytes`` of fetched data wait in the window (counted when the fetch
  starts, from the size the listing gave) plus the one element the caller works on; at least
  one element is always let in, whatever its size.

Why not Beam's ``AsyncWrapper`` (``apache_beam.transforms.async_dofn``): it needs keyed input
and keyed state (a shuffle before it), commits results from a processing-time timer (every few
seconds), bounds the buffer by count only, and would hand every fetched 15 MB object to the next
stage as a pipeline element (through the shuffle its state implies). Here the fetched bytes never
leave the DoFn instance; the decode runs in the same fused stage on the bytes it fetched.

The DoFns using it (``IdentifyDicom``, ``DecodePixels``) emit the elements leaving the window as
``WindowedValue``s with the timestamp and window each element arrived with, so an element's
outputs keep its own windowing even when emitted while another element is processed.
Local files never enter the window: they keep their direct path.
"""
from __future__ import annotations

import collections
import concurrent.futures
from typing import Any, Callable, Deque, Iterator, List, Tuple

#: defaults of ``--prefetch_objects`` / ``--prefetch_mb`` (per DoFn instance, i.e. per worker
#: for each reading stage): see docs/object-storage.md for how they were chosen
DEFAULT_PREFETCH_OBJECTS = 16
DEFAULT_PREFETCH_MB = 32

#: ``[item, data, error]``
Outcome = List[Any]


class ReadAhead:
    """An ordered, bounded look-ahead window; ``push`` and ``drain`` yield ``(item, data,
    error)`` in arrival order. Not thread-safe (one per DoFn instance, used by its thread)."""

    def __init__(self, pool: concurrent.futures.Executor, max_items: int, max_bytes: int):
        self.pool = pool
        self.max_items = max(1, int(max_items))
        self.max_bytes = max(1, int(max_bytes))
        self._window: Deque[Tuple[Any, concurrent.futures.Future, int]] = collections.deque()
        self._bytes = 0
        self.peak_items = 0
        self.peak_bytes = 0

    def __len__(self) -> int:
        return len(self._window)

    @property
    def bytes_in_window(self) -> int:
        return self._bytes

    def push(self, item: Any, fetch: Callable[[], bytes], cost: int) -> Iterator[Outcome]:
        """Start fetching ``item`` (``fetch()`` on the pool); first yield the oldest elements
        that must leave to make room for it. Consume the iterator fully."""
        cost = max(0, int(cost))
        while self._window and (len(self._window) >= self.max_items
                                or self._bytes + cost > self.max_bytes):
            yield self._pop()
        self._window.append((item, self.pool.submit(fetch), cost))
        self._bytes += cost
        self.peak_items = max(self.peak_items, len(self._window))
        self.peak_bytes = max(self.peak_bytes, self._bytes)

    def drain(self) -> Iterator[Outcome]:
        """Every element still in the window, oldest first (waits for their fetches)."""
        while self._window:
            yield self._pop()

    def _pop(self) -> Outcome:
        item, future, cost = self._window.popleft()
        try:
            data, error = future.result(), None
        except Exception as exc:  # noqa: BLE001 - the element's failure, handled by the caller
            data, error = None, exc
        self._bytes -= cost
        # a list, not a tuple: the caller may drop ``data`` from it (``outcome[1] = None``) as
        # soon as it has used the bytes, before it is done with the element
        return [item, data, error]

    def cancel(self) -> None:
        """Forget the window (fetches already running finish in the background)."""
        for _, future, _ in self._window:
            future.cancel()
        self._window.clear()
        self._bytes = 0


def thread_pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads),
                                                 thread_name_prefix="dicomvec-read-ahead")
