"""What the D-Bus adapter needs from the rest of wkd: the operations behind the methods.

The adapter depends on this protocol only (dasbus's habit: an interface class converts types
and hands the call to an implementation object that knows nothing of D-Bus). The daemon
(wkd/system/daemon.py) passes the Engine, which satisfies it; mypy checks that there. The
adapter never imports the engine, the disk layer or the HSM backends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from wkd.model import (
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
from wkd.values import DevicePath, KekLabel, VolumeRef

Progress = Callable[[int, int, str], None]


class Backend(Protocol):
    @property
    def hsm_state(self) -> HsmState: ...

    async def hsm_info(self) -> HsmInfo: ...

    def subscribe(self, callback: Callable[[VolumeEvent], None]) -> Callable[[], None]: ...

    async def list_volumes(self) -> list[VolumeInfo]: ...

    async def list_keks(self) -> list[KekInfo]: ...

    async def create_kek(self, label: KekLabel, *, caller: Caller) -> KekInfo: ...

    async def format(self, device: DevicePath, kek_label: KekLabel | None,
                     options: FormatOptions, *, caller: Caller) -> VolumeInfo: ...

    async def unlock(self, volume: VolumeRef, options: UnlockOptions, *,
                     caller: Caller) -> VolumeInfo: ...

    async def lock(self, volume: VolumeRef, options: LockOptions, *,
                   caller: Caller) -> VolumeInfo: ...

    async def rewrap(self, volume: VolumeRef, new_kek_label: KekLabel, *,
                     caller: Caller) -> VolumeInfo: ...

    async def rewrap_all(self, from_kek: KekLabel, to_kek: KekLabel, *, caller: Caller,
                         on_progress: Progress) -> RewrapAllResult: ...
