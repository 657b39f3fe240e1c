"""A background poller: a daemon thread that calls a function every few seconds until stopped.

The model manager polls its folder for versions with one, the registry its config file.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class Poller:
    """Calls `poll` every `seconds` (from `start`, after the first wait) until `stop`.

    Args:
        poll: what each round calls; an exception is logged with `failed` on `log` (the
            caller's logger) and the next round comes as usual.
        seconds: the wait between rounds (0: `start` starts no thread).
        name: the thread's name.
        log: the logger the failures go to.
        failed: the message of a failed round, e.g. "polling /models/vae failed".
    """

    def __init__(self, poll: Callable[[], object], seconds: float, name: str, log: logging.Logger, failed: str):
        self._poll = poll
        self.seconds = seconds
        self._name = name
        self._log = log
        self._failed = failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopped(self) -> bool:
        """Whether `stop` was called (work in progress checks it to end early)."""
        return self._stop.is_set()

    def start(self) -> None:
        if self.seconds > 0:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self._poll()
            except Exception:  # a bad round must not stop the poller
                self._log.exception("%s", self._failed)
