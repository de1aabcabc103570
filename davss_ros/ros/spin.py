"""Spinning an executor on a background thread, and stopping it without a deadlock."""

from __future__ import annotations

import threading


class BackgroundSpin:
    """Spins ``executor`` in short slices on a daemon thread until ``stop()``.

    Why not ``Thread(target=executor.spin)`` + ``executor.shutdown()``: in rclpy Kilted,
    ``shutdown`` does not wait for the spinning thread, and ``destroy_node`` then waits,
    holding the GIL, for handles that the spinning thread (still inside
    ``wait_for_ready_callbacks``) needs the GIL to release: a deadlock, seen under load.
    Stop and join this first, then destroy nodes and shut the executor down.
    """

    def __init__(self, executor, *, name: str = "davss_spin", slice_s: float = 0.1) -> None:
        self.executor = executor
        self._stop = threading.Event()
        self._slice = slice_s
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=self._slice)
            except Exception as exc:
                if self._stop.is_set():  # the context went away while stopping
                    return
                self.error = exc  # why the thread ended, for whoever waits on it
                raise

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop spinning; True when the thread has ended (only then destroy the nodes)."""
        self._stop.set()
        self.thread.join(timeout)
        return not self.thread.is_alive()
