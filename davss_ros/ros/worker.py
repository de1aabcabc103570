"""A worker thread with a one-frame slot: the newest frame wins.

The subscription callback only drops the message into the slot and returns, so the
executor never waits for the network. When a frame arrives while the previous one is still
waiting, the waiting one is dropped and counted: under load the node segments the newest
frame instead of building a queue of stale ones.

Every submitted item ends in exactly one of: processed (``process`` returned or raised),
dropped (replaced by a newer one), or discarded (cleared, or still waiting or refused when
the worker stopped; ``on_discard`` hears of each), so a caller can account for every frame.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_log = logging.getLogger(__name__)


class LatestFrameWorker(Generic[T]):
    """Runs ``process(item)`` on a background thread for the newest submitted item.

    ``on_error(exc)`` is called (on the worker thread) when ``process`` raises; the worker
    keeps running. ``on_discard(item)`` is called for each item that will never be
    processed nor counted as dropped: cleared, waiting at ``stop``, or submitted after it.
    """

    def __init__(self, process: Callable[[T], None],
                 on_error: Callable[[BaseException], None] | None = None,
                 name: str = "davss_worker",
                 on_discard: Callable[[T], None] | None = None) -> None:
        self._process = process
        self._on_error = on_error
        self._on_discard = on_discard
        self._cond = threading.Condition()
        self._slot: T | None = None
        self._has_item = False
        self._busy = False
        self._stopping = False
        self._dropped = 0
        self._processed = 0
        self._discarded = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Frames replaced by a newer one before the worker took them."""
        return self._dropped

    @property
    def processed(self) -> int:
        return self._processed

    @property
    def discarded(self) -> int:
        """Items cleared, stopped or refused (never processed, not counted as dropped)."""
        return self._discarded

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, item: T) -> bool:
        """Put ``item`` in the slot; True when it replaced a waiting item (one drop).

        After ``stop`` the item is refused (discarded) and the answer is False.
        """
        return self.offer(item) == "replaced"

    def offer(self, item: T) -> str:
        """Like ``submit``; says what happened: 'queued', 'replaced' or 'refused'."""
        with self._cond:
            if self._stopping:
                self._discarded += 1
                outcome = "refused"
            else:
                outcome = "replaced" if self._has_item else "queued"
                if self._has_item:
                    self._dropped += 1
                self._slot, self._has_item = item, True
                self._cond.notify_all()
        if outcome == "refused":
            self._discarded_one(item)
        return outcome

    def clear(self) -> bool:
        """Discard the waiting item, if any (not counted as a drop); True if there was one."""
        with self._cond:
            had, item = self._has_item, self._slot
            self._slot, self._has_item = None, False
            if had:
                self._discarded += 1
        if had:
            self._discarded_one(item)
        return had

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing waits and nothing is being processed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._has_item and not self._busy, timeout=timeout)

    def reset_counters(self) -> None:
        with self._cond:
            self._dropped = 0
            self._processed = 0

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Discard the waiting item, finish the current one and end the thread."""
        with self._cond:
            self._stopping = True
            had, item = self._has_item, self._slot
            self._slot, self._has_item = None, False
            if had:
                self._discarded += 1
            self._cond.notify_all()
        if had:
            self._discarded_one(item)
        del item
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _discarded_one(self, item: T) -> None:
        if self._on_discard is not None:
            try:
                self._on_discard(item)
            except Exception:  # pragma: no cover - last resort
                _log.exception("discard handler failed")

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._has_item or self._stopping)
                if self._stopping:
                    self._busy = False
                    self._cond.notify_all()
                    return
                item, self._slot, self._has_item = self._slot, None, False
                self._busy = True
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
                    self._busy = False
                    self._processed += 1
                    self._cond.notify_all()
