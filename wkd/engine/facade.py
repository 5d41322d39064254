"""The Engine: Format, Unlock, Lock, Rewrap, RewrapAll and the views, on two ports.

Adapters (the D-Bus service, `wkd attach`, hot-plug) call this class and nothing behind it.
It takes validated values (wkd/values.py) and trusts them; it holds no I/O of its own: the
disk and state directory are behind `DiskPort`, the key store behind `HsmBackend`
(wkd/engine/ports.py), and the decisions are the pure planners of wkd/core. Each concern is
its own small module; this class wires them and owns the life cycle.

The engine owns three rules:
  * one operation per volume at a time (a per-UUID lock; Format locks the device path);
  * nothing on disk changes when an operation fails (checks first, crash-atomic Format,
    tokens written in the crash-safe order of docs/token-format.md);
  * the clear volume key exists only in a `SecretKey`, for the shortest span, and is wiped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from wkd.config import Config
from wkd.core.facts import Checkpoint
from wkd.engine.context import Context
from wkd.engine.format import Formatter
from wkd.engine.mapping import Mapper
from wkd.engine.ports import DiskPort, HsmBackend
from wkd.engine.rewrap import Rewrapper
from wkd.engine.views import Views
from wkd.hsm.base import ensure_kek
from wkd.log import MessageId, log_event
from wkd.model import (
    SYSTEM_CALLER,
    Caller,
    FormatOptions,
    HsmInfo,
    HsmState,
    KekInfo,
    LockOptions,
    RewrapAllResult,
    UnlockOptions,
    VolumeEvent,
    VolumeInfo,
)
from wkd.values import DevicePath, KekLabel, VolumeRef, VolumeUuid

log = logging.getLogger("wkd.engine")


class Engine:
    def __init__(self, hsm: HsmBackend, disk: DiskPort, config: Config, *,
                 checkpoint: Checkpoint | None = None) -> None:
        self._ctx = Context(hsm, disk, config, checkpoint)
        self._views = Views(self._ctx)
        self._formatter = Formatter(self._ctx, self._views)
        self._mapper = Mapper(self._ctx, self._views)
        self._rewrapper = Rewrapper(self._ctx, self._views)
        self._hsm_state = HsmState.UNAVAILABLE

    # --- life cycle ---------------------------------------------------------------------
    async def start(self, *, discover: bool = True) -> None:
        """Open the HSM; then (discover=True, the daemon) make sure the default KEK exists,
        finish or roll back interrupted Formats, find wkd volumes and finish interrupted
        rewraps. Boot-time `wkd attach` passes discover=False: it must not create keys, and
        reads only the header it unlocks."""
        ctx = self._ctx
        await ctx.hsm.open()
        self._hsm_state = HsmState.READY
        ctx.registry.update(await ctx.io(ctx.disk.load_registry))
        if not discover:
            return
        kek, created = await ensure_kek(ctx.hsm, KekLabel(ctx.config.hsm.default_kek))
        if created:
            log_event(log, MessageId.KEK_CREATED, f"created default KEK {kek.label}",
                      operation="create-kek", result="ok", kek=kek.label)
        await self._formatter.recover()
        await self._views.scan()
        await self._rewrapper.reconcile_all()

    async def stop(self) -> None:
        await self._ctx.close()
        await self._ctx.hsm.close()
        self._hsm_state = HsmState.UNAVAILABLE

    @property
    def hsm_state(self) -> HsmState:
        return self._hsm_state

    @property
    def config(self) -> Config:
        return self._ctx.config

    @property
    def checkpoint(self) -> Checkpoint:
        return self._ctx.checkpoint

    @checkpoint.setter
    def checkpoint(self, value: Checkpoint) -> None:
        self._ctx.checkpoint = value

    async def hsm_info(self) -> HsmInfo:
        return await self._ctx.hsm.info()

    def subscribe(self, callback: Callable[[VolumeEvent], None]) -> Callable[[], None]:
        return self._ctx.subscribe(callback)

    # --- KEKs ---------------------------------------------------------------------------
    async def create_kek(self, label: KekLabel, *, caller: Caller = SYSTEM_CALLER) -> KekInfo:
        kek = await self._ctx.hsm.create_kek(label)
        log_event(log, MessageId.KEK_CREATED, f"created KEK {label}", operation="create-kek",
                  result="ok", caller_uid=caller.uid, caller_pid=caller.pid, kek=label)
        return kek

    async def list_keks(self) -> list[KekInfo]:
        return await self._ctx.hsm.list_keks()

    # --- views --------------------------------------------------------------------------
    async def scan(self) -> list[VolumeUuid]:
        return await self._views.scan()

    async def list_volumes(self) -> list[VolumeInfo]:
        return await self._views.list_volumes()

    async def get_volume(self, volume: VolumeRef) -> VolumeInfo:
        return await self._views.get_volume(volume)

    # --- operations ---------------------------------------------------------------------
    async def format(self, device: DevicePath, kek: KekLabel | None, options: FormatOptions,
                     *, caller: Caller = SYSTEM_CALLER) -> VolumeInfo:
        return await self._formatter.format(device, kek, options, caller=caller)

    async def unlock(self, volume: VolumeRef, options: UnlockOptions,
                     *, caller: Caller = SYSTEM_CALLER) -> VolumeInfo:
        return await self._mapper.unlock(volume, options, caller=caller)

    async def lock(self, volume: VolumeRef, options: LockOptions,
                   *, caller: Caller = SYSTEM_CALLER) -> VolumeInfo:
        return await self._mapper.lock(volume, options, caller=caller)

    async def rewrap(self, volume: VolumeRef, kek: KekLabel,
                     *, caller: Caller = SYSTEM_CALLER) -> VolumeInfo:
        return await self._rewrapper.rewrap(volume, kek, caller=caller)

    async def rewrap_all(self, from_kek: KekLabel, to_kek: KekLabel, *,
                         caller: Caller = SYSTEM_CALLER,
                         on_progress: Callable[[int, int, str], None] | None = None
                         ) -> RewrapAllResult:
        return await self._rewrapper.rewrap_all(from_kek, to_kek, caller=caller,
                                                on_progress=on_progress)

    # --- hot-plug -----------------------------------------------------------------------
    async def device_added(self, device: DevicePath) -> VolumeInfo | None:
        """A device appeared: note it if it carries a wkd volume (None if not)."""
        return await self._views.device_added(device)

    async def auto_unlock(self, device: DevicePath, options: UnlockOptions) -> VolumeInfo:
        """Unlock with no caller (hot-plug); refused for duplicated volume UUIDs."""
        return await self._mapper.unlock(device, options, automatic=True)

    async def device_left(self, devnode: str, devnum: int = 0) -> None:
        """A device disappeared: remove the mappings wkd made on it, update the views."""
        await self._mapper.device_left(devnode, devnum)
