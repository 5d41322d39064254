"""What the engine's parts share: the ports, the per-volume locks, the event subscribers, the
worker-thread hop, and the in-memory record of where volumes are.

Rules kept here for every part:
  * one operation per volume at a time (`volume_lock`, keyed by UUID; Format by device);
  * blocking I/O never runs on the event loop: every DiskPort call goes through `io`, one
    worker-thread hop per call;
  * the registry (UUID -> recorded device) changes only through `record`, which writes it
    back coalesced and, when the state directory cannot be written, keeps it in memory and
    tries again later (bookkeeping catches up; the operation that caused it stands).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import ParamSpec, TypeVar

from wkd import errors
from wkd.config import Config
from wkd.core.facts import Checkpoint
from wkd.engine.ports import DiskPort, HsmBackend
from wkd.model import VolumeEvent, VolumeEventKind, VolumeInfo
from wkd.values import VolumeUuid

log = logging.getLogger("wkd.engine")

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Coalescing of registry writes: registering 1000 volumes one by one would otherwise
# rewrite the whole file 1000 times (the registry is a cache of what a scan finds).
REGISTRY_FLUSH_DELAY = 1.0
# After a failed write (full or read-only state directory), try again this much later.
REGISTRY_RETRY_DELAY = 30.0


class Context:
    def __init__(self, hsm: HsmBackend, disk: DiskPort, config: Config,
                 checkpoint: Checkpoint | None) -> None:
        self.hsm = hsm
        self.disk = disk
        self.config = config
        self.checkpoint: Checkpoint = checkpoint or (lambda _step: None)
        self.registry: dict[VolumeUuid, str] = {}
        # UUID -> devices seen carrying it since start (scan, hot-plug, calls by path)
        self.present: dict[VolumeUuid, set[str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._subscribers: list[Callable[[VolumeEvent], None]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._dirty = False

    # --- threads and locks --------------------------------------------------------------
    async def io(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run one blocking DiskPort call in a worker thread."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    @contextlib.asynccontextmanager
    async def volume_lock(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            yield

    # --- events -------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[VolumeEvent], None]) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def emit(self, kind: VolumeEventKind, uuid: VolumeUuid, info: VolumeInfo | None) -> None:
        event = VolumeEvent(kind, uuid, info)
        for cb in list(self._subscribers):
            try:
                cb(event)
            except Exception:
                log.exception("volume event subscriber failed")

    # --- where volumes are ---------------------------------------------------------------
    def places(self, uuid: VolumeUuid) -> set[str]:
        """Every device `uuid` was recorded on or seen on."""
        known = self.registry.get(uuid)
        return self.present.get(uuid, set()) | ({known} if known else set())

    def all_places(self) -> dict[VolumeUuid, set[str]]:
        return {u: self.places(u) for u in self.registry.keys() | self.present.keys()}

    def saw(self, uuid: VolumeUuid, path: str, carries: bool) -> None:
        seen = self.present.setdefault(uuid, set())
        if carries:
            seen.add(path)
        else:
            seen.discard(path)

    def record(self, uuid: VolumeUuid, path: str) -> None:
        if self.registry.get(uuid) == path:
            return
        self.registry[uuid] = path
        self._dirty = True
        self._schedule(REGISTRY_FLUSH_DELAY)

    def _schedule(self, delay: float) -> None:
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(delay, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_handle = None
        asyncio.ensure_future(self.flush()).add_done_callback(_log_failure)

    async def flush(self) -> None:
        """Write the registry if it changed; on failure keep it and retry later."""
        if not self._dirty:
            return
        self._dirty = False
        try:
            await self.io(self.disk.save_registry, dict(self.registry))
        except errors.StateUnwritable as e:
            self._dirty = True
            log.warning("the volume registry is kept in memory for now: %s", e)
            self._schedule(REGISTRY_RETRY_DELAY)

    async def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        await self.flush()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("saving the volume registry failed", exc_info=task.exception())
