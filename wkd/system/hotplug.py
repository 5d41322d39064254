"""Hot-plug wiring: udev events (wkd/system/udev.py) to the engine.

The policy (wkd/core/hotplug.py) names candidates: LUKS devices that appeared, LUKS devices
that left. Everything else happens in tasks, off the event loop's critical path and through
the engine: whether the volume is marked for auto-unlock (its wkd token says so, or
/etc/wkdtab lists it without `noauto`; a wkdtab entry also gives the mapping name and
options), the auto-unlock itself (`Engine.auto_unlock`, which refuses a volume whose UUID
another present device carries), and the clean-up when a device leaves
(`Engine.device_left`: only mappings wkd made on that device, under the volume's lock, with a
journal entry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from wkd import errors
from wkd.engine import Engine
from wkd.model import UnlockOptions
from wkd.system.udev import UdevMonitor
from wkd.values import DevicePath, MappingName
from wkd.wkdtab import WkdtabEntry, parse_wkdtab_lenient

log = logging.getLogger("wkd.hotplug")


def load_entries(path: str) -> tuple[WkdtabEntry, ...]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return ()
    except (OSError, UnicodeDecodeError) as e:
        log.warning("hot-plug ignores %s: %s", path, e)
        return ()
    entries, bad = parse_wkdtab_lenient(text, path=path)
    for err in bad:
        log.warning("hot-plug ignores a line: %s", err)
    return entries


def _candidate(_devnode: str, _uuid: str) -> bool:
    # Every LUKS device is looked at; the task decides (reading headers and /etc/wkdtab
    # blocks, so it does not happen inside the policy, on the event loop).
    return True


class Hotplug:
    def __init__(self, engine: Engine, *, wkdtab: str = "/etc/wkdtab",
                 start: bool = True) -> None:
        self._engine = engine
        self._wkdtab = wkdtab
        self._tasks: set[asyncio.Task[None]] = set()
        self._monitor = UdevMonitor(asyncio.get_running_loop(), self._on_unlock,
                                    self._on_cleanup, _candidate, start=start)

    @property
    def monitor(self) -> UdevMonitor:
        return self._monitor

    async def drain(self) -> None:
        """Wait for the unlock/cleanup tasks started so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        self._monitor.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _entry_for(self, devnode: str, uuid: str) -> WkdtabEntry | None:
        return next((e for e in load_entries(self._wkdtab) if e.matches(devnode, uuid)), None)

    def _on_unlock(self, devnode: str, _uuid: str) -> None:
        self._spawn(self._unlock(devnode))

    def _on_cleanup(self, devnode: str, devnum: int) -> None:
        self._spawn(self._cleanup(devnode, devnum))

    async def _unlock(self, devnode: str) -> None:
        device = DevicePath(devnode)
        info = await self._engine.device_added(device)
        if info is None:
            self._monitor.policy.unlock_failed(devnode)
            return
        entry = await asyncio.to_thread(self._entry_for, devnode, info.uuid)
        marked = (not entry.noauto) if entry is not None else info.auto_unlock
        if not marked:
            log.debug("hot-plug: %s (%s) is not marked for auto-unlock", devnode, info.uuid)
            self._monitor.policy.unlock_failed(devnode)
            return
        options = UnlockOptions() if entry is None else UnlockOptions(
            name=MappingName(entry.name), read_only=entry.read_only, allow_discards=entry.discard)
        try:
            await self._engine.auto_unlock(device, options)
        except errors.WkdError as e:
            log.warning("auto-unlock of %s (%s) failed: %s", devnode, info.uuid, e)
            self._monitor.policy.unlock_failed(devnode)

    async def _cleanup(self, devnode: str, devnum: int) -> None:
        try:
            await self._engine.device_left(devnode, devnum)
        except errors.WkdError as e:
            log.warning("clean-up after %s left failed: %s", devnode, e)
