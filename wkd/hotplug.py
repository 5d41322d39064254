"""Hot-plug: auto-unlock volumes when their disk appears, clean up when it goes.

wkd.udev decides (pure policy + the pyudev adapter); this module acts on the engine. A volume is
auto-unlocked when its wkd token says so (Format option auto-unlock) or when /etc/wkdtab lists
it without `noauto`; a wkdtab entry also gives the mapping name and options.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from wkd import devices, errors, luks2
from wkd.engine import Engine
from wkd.headers import read_header
from wkd.model import UnlockOptions
from wkd.udev import UdevMonitor
from wkd.values import MappingName
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


class Hotplug:
    def __init__(self, engine: Engine, *, wkdtab: str = "/etc/wkdtab",
                 start: bool = True) -> None:
        self._engine = engine
        self._wkdtab = wkdtab
        self._tasks: set[asyncio.Task[None]] = set()
        self._monitor = UdevMonitor(asyncio.get_running_loop(), self._on_unlock,
                                    self._on_cleanup, self._is_auto_unlock, start=start)

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

    def _entry_for(self, devnode: str, uuid: str | None) -> WkdtabEntry | None:
        return next((e for e in load_entries(self._wkdtab) if e.matches(devnode, uuid)), None)

    def _is_auto_unlock(self, devnode: str, uuid: str | None) -> bool:
        entry = self._entry_for(devnode, uuid)
        if entry is not None:
            return not entry.noauto
        try:
            header = read_header(devnode)
        except errors.WkdError:
            return False
        return any(t.auto_unlock for t in header.tokens.values())

    def _on_unlock(self, devnode: str, uuid: str | None) -> None:
        self._spawn(self._unlock(devnode, uuid))

    def _on_cleanup(self, uuid: str) -> None:
        self._spawn(self._cleanup(uuid))

    async def _unlock(self, devnode: str, uuid: str | None) -> None:
        info = await self._engine.add_device(devnode)
        if info is None:
            return
        entry = self._entry_for(devnode, info.uuid)
        options = UnlockOptions() if entry is None else UnlockOptions(
            name=MappingName(entry.name), read_only=entry.read_only, allow_discards=entry.discard)
        try:
            await self._engine.unlock(info.uuid, options)
        except errors.WkdError as e:
            log.warning("auto-unlock of %s (%s) failed: %s", devnode, info.uuid, e)
            self._monitor.policy.unlock_failed(devnode)

    async def _cleanup(self, uuid: str) -> None:
        # The policy may still list a volume that was locked over D-Bus since; then there is
        # no mapping to remove, and a mapping opened again under another name goes too: its
        # disk is gone either way.
        name = devices.find_mapping(uuid)
        if name is not None:
            try:
                # Deferred: if something still holds the mapping, the kernel removes it when
                # the last user closes it; the disk is gone either way.
                await asyncio.to_thread(luks2.deactivate, name, deferred=True)
            except errors.WkdError as e:
                log.warning("removing the mapping %s of vanished volume %s failed: %s",
                            name, uuid, e)
        await self._engine.remove_device(uuid)
