"""A worker thread with a short queue per stream: the newest frames win.

The subscription callback only drops the message into its stream's queue (one per camera,
``depth`` frames, 1 by default) and returns, so the executor never waits for the network.
When a frame arrives while ``depth`` older ones of the same stream are still waiting, the
oldest is dropped and counted: under load the node segments the newest frames instead of
building a queue of stale ones. A depth of 1 is the lowest latency (a frame waits at most
one period); a deeper queue lets a slow frame (a key frame) be followed by quick ones that
catch up, at up to ``depth - 1`` more periods of latency. Waiting frames are taken oldest
first over all streams, so no camera starves another. With ``threads`` > 1 several frames
run at once, each of another stream: a stream's frames stay in order, one at a time (its
propagation state goes from one to the next).

Every submitted item ends in exactly one of: processed (``process`` returned or raised),
dropped (replaced by a newer one), or discarded (cleared, or still waiting or refused when
the worker stopped; ``on_discard`` hears of each), so a caller can account for every frame.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_log = logging.getLogger(__name__)


class LatestFrameWorker(Generic[T]):
    """Runs ``process(item)`` on background threads for the newest submitted items.

    ``on_error(exc)`` is called (on the worker thread) when ``process`` raises; the worker
    keeps running. ``on_discard(item)`` is called for each item that will never be
    processed nor counted as dropped: cleared, waiting at ``stop``, or submitted after it.
    """

    def __init__(self, process: Callable[[T], None],
                 on_error: Callable[[BaseException], None] | None = None,
                 name: str = "davss_worker",
                 on_discard: Callable[[T], None] | None = None, depth: int = 1,
                 threads: int = 1) -> None:
        if int(depth) != depth or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        if int(threads) != threads or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        self.depth = int(depth)
        self.threads = int(threads)
        self._process = process
        self._on_error = on_error
        self._on_discard = on_discard
        self._cond = threading.Condition()
        # stream -> deque of (sequence number, item), oldest first
        self._slots: dict[object, collections.deque] = {}
        self._seq = itertools.count()
        self._running: set = set()  # streams with a frame being processed
        self._stopping = False
        self._dropped = 0
        self._dropped_by: dict = {}
        self._processed = 0
        self._discarded = 0
        self._threads = [threading.Thread(target=self._run, daemon=True,
                                          name=name if i == 0 else f"{name}_{i}")
                         for i in range(self.threads)]
        for thread in self._threads:
            thread.start()

    @property
    def dropped(self) -> int:
        """Frames replaced by a newer one before the worker took them."""
        return self._dropped

    def dropped_by(self, stream=None) -> int:
        """Drops of one stream."""
        return self._dropped_by.get(stream, 0)

    @property
    def waiting(self) -> int:
        """Items waiting (at most ``depth`` per stream)."""
        with self._cond:
            return sum(len(q) for q in self._slots.values())

    def waiting_items(self, stream=None) -> list[T]:
        """The items of ``stream`` waiting now, oldest first."""
        with self._cond:
            return [item for _, item in self._slots.get(stream, ())]

    @property
    def processed(self) -> int:
        return self._processed

    @property
    def discarded(self) -> int:
        """Items cleared, stopped or refused (never processed, not counted as dropped)."""
        return self._discarded

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def submit(self, item: T, stream=None) -> bool:
        """Put ``item`` in ``stream``'s queue; True when the queue was full and its oldest
        item was dropped for it. After ``stop`` the item is refused (discarded), answer
        False.
        """
        return self.offer(item, stream) == "replaced"

    def offer(self, item: T, stream=None) -> str:
        """Like ``submit``; says what happened: 'queued', 'replaced' (the stream's oldest
        waiting item dropped for this one) or 'refused'."""
        with self._cond:
            if self._stopping:
                self._discarded += 1
                outcome = "refused"
            else:
                queue = self._slots.setdefault(stream, collections.deque())
                replaced = len(queue) >= self.depth
                outcome = "replaced" if replaced else "queued"
                if replaced:
                    self._dropped += 1
                    self._dropped_by[stream] = self._dropped_by.get(stream, 0) + 1
                    queue.popleft()
                queue.append((next(self._seq), item))
                self._cond.notify_all()
        if outcome == "refused":
            self._discarded_one(item)
        return outcome

    def clear(self) -> bool:
        """Discard the waiting items, if any (not counted as drops); True if there were."""
        with self._cond:
            items = self._take_all()
        for item in items:
            self._discarded_one(item)
        return bool(items)

    def _take_all(self) -> list[T]:
        """Empty every queue (under the lock); the items, counted as discarded."""
        items = [item for q in self._slots.values() for _, item in q]
        self._slots.clear()
        self._discarded += len(items)
        return items

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing waits and nothing is being processed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._slots and not self._running, timeout=timeout)

    def reset_counters(self) -> None:
        with self._cond:
            self._dropped = 0
            self._dropped_by.clear()
            self._processed = 0

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Discard the waiting items, finish the ones in hand and end the threads."""
        with self._cond:
            self._stopping = True
            items = self._take_all()
            self._cond.notify_all()
        for item in items:
            self._discarded_one(item)
        del items
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(None if deadline is None
                            else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads
                       if t is not threading.current_thread())

    def _discarded_one(self, item: T) -> None:
        if self._on_discard is not None:
            try:
                self._on_discard(item)
            except Exception:  # pragma: no cover - last resort
                _log.exception("discard handler failed")

    def _next(self):
        """The oldest waiting item of a stream not being processed (under the lock)."""
        free = [k for k in self._slots if k not in self._running]
        if not free:
            return None
        stream = min(free, key=lambda k: self._slots[k][0][0])
        queue = self._slots[stream]
        item = queue.popleft()[1]
        if not queue:
            del self._slots[stream]
        return stream, item

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    taken = self._next()
                    if taken is not None:
                        break
                    self._cond.wait()
                if self._stopping:
                    self._cond.notify_all()
                    return
                stream, item = taken
                self._running.add(stream)
            try:
                self._process(item)
            except Exception as exc:  # a bad frame must not end the thread
                if self._on_error is not None:
                    try:
                        self._on_error(exc)
                    except Exception:  # pragma: no cover - last resort
                        _log.exception("error handler failed")
                else:
                    _log.exception("frame processing failed")
            finally:
                del item
                with self._cond:
                    self._running.discard(stream)
                    self._processed += 1
                    self._cond.notify_all()
