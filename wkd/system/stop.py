"""Stop requests (SIGTERM, SIGINT), honoured from the first instant of the daemon's code.

`StopSignals.install()` is the first statement of `wkd.system.daemon.main`: from then on a
stop signal never kills the process, it is recorded. Signals that arrived while blocked
(before the daemon's code ran) are delivered by the unblock that follows, so they too are
honoured. While the event loop runs, a stop request cancels the task given to `cancelling`
(the daemon's start-up or its wait for work), at whatever await it is; the daemon then
cleans up and exits with status 0.

Why not `loop.add_signal_handler`: closing the loop puts back SIG_DFL, so a SIGTERM in the
last instants of shutdown would kill the process with signal 15 instead of a clean exit.
Here the Python handler stays installed for the whole life of the process, and only the
wake-up descriptor (which lets a signal delivered to a worker thread wake the loop's
epoll_wait; signal.set_wakeup_fd) is scoped to the loop.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # asyncio is imported where it is used: `wkd detach` must not load it
    import asyncio

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    def __init__(self) -> None:
        self.received: int | None = None
        self._on_stop: Callable[[], None] | None = None

    @property
    def requested(self) -> bool:
        return self.received is not None

    def install(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        # Runs in the main thread, between two bytecodes. Only the first request acts: a
        # second SIGTERM during the clean-up must not cancel the clean-up.
        if self.received is not None:
            return
        self.received = signum
        if self._on_stop is not None:
            self._on_stop()

    @contextlib.contextmanager
    def cancelling(self, task: asyncio.Task[object]) -> Iterator[None]:
        """While inside, a stop request cancels `task` (at once if one came already)."""
        loop = task.get_loop()
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        loop.add_reader(rsock.fileno(), _drain, rsock)
        old_fd = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
        self._on_stop = lambda: _call_soon(loop, task.cancel)
        try:
            if self.received is not None:
                loop.call_soon(task.cancel)
            yield
        finally:
            self._on_stop = None
            signal.set_wakeup_fd(old_fd)
            loop.remove_reader(rsock.fileno())
            rsock.close()
            wsock.close()


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], object]) -> None:
    loop.call_soon_threadsafe(fn)


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(64):
            pass
