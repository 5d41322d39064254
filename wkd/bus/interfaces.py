"""org.wkd1.Manager: the interface class at /org/wkd1.

Thin, as dasbus and python-sdbus interface classes are: each method converts the reply and
hands the call to wkd.bus.calls.Calls; names, signatures and authorization come from
org.wkd1.xml through wkd.bus.members. The Volume and Job interfaces live with the objects
they mirror (wkd/bus/tree.py, wkd/bus/jobs.py).
"""

from __future__ import annotations

from typing import Any

from dbus_fast import Variant
from dbus_fast.service import ServiceInterface

import wkd
from wkd.bus.api import MANAGER, volume_path
from wkd.bus.calls import Calls
from wkd.bus.members import exported, method
from wkd.model import HsmInfo

Options = dict[str, Variant]


@exported(MANAGER)
class Manager(ServiceInterface):
    """org.wkd1.Manager at /org/wkd1."""

    def __init__(self, calls: Calls, hsm_info: HsmInfo | None) -> None:
        super().__init__(MANAGER)
        self._calls = calls
        self._hsm_info = hsm_info

    @method(MANAGER, "CreateKek")
    async def create_kek(self, label: str, options: Options) -> str:
        return (await self._calls.create_kek(label, options)).key_id

    @method(MANAGER, "ListKeks")
    async def list_keks(self, options: Options) -> list[list[Any]]:
        return [[k.label, k.key_id, k.key_bits] for k in await self._calls.list_keks(options)]

    @method(MANAGER, "Format")
    async def format(self, device: str, kek_label: str, options: Options) -> str:
        return await self._calls.format(device, kek_label, options)

    @method(MANAGER, "Unlock")
    async def unlock(self, volume: str, options: Options) -> str:
        return volume_path((await self._calls.unlock(volume, options)).uuid)

    @method(MANAGER, "Lock")
    async def lock(self, volume: str, options: Options) -> None:
        await self._calls.lock(volume, options)

    @method(MANAGER, "Rewrap")
    async def rewrap(self, volume: str, new_kek_label: str, options: Options) -> None:
        await self._calls.rewrap(volume, new_kek_label, options)

    @method(MANAGER, "RewrapAll")
    async def rewrap_all(self, from_kek_label: str, to_kek_label: str,
                         options: Options) -> str:
        return await self._calls.rewrap_all(from_kek_label, to_kek_label, options)

    @method(MANAGER, "ListVolumes")
    async def list_volumes(self, options: Options) -> list[str]:
        return await self._calls.list_volumes(options)

    def property_value(self, name: str) -> Any:
        info = self._hsm_info
        values: dict[str, Any] = {
            "Version": wkd.__version__,
            "HsmState": str(self._calls.backend.hsm_state.value),
            "HsmSoftware": bool(info.software) if info else False,
            "HsmEmbedded": bool(info.embedded) if info else False,
            "HsmToken": info.token_label if info else "",
            "HsmModel": f"{info.manufacturer} {info.model}".strip() if info else "",
        }
        return values[name]
