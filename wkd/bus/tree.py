"""The object tree under /org/wkd1: volume and job objects, and the ObjectManager signals.

The backend reports volume events (possibly from a worker thread); the tree exports,
refreshes or drops the matching org.wkd1.Volume objects on the event loop and says so with
InterfacesAdded/InterfacesRemoved from /org/wkd1, where the D-Bus specification
("org.freedesktop.DBus.ObjectManager") has the manager send them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from wkd.bus.api import API, JOB, OBJECT_MANAGER, ROOT_PATH, VOLUME, volume_path
from wkd.bus.jobs import JobObject
from wkd.bus.members import exported, method, variants
from wkd.model import VolumeEvent, VolumeEventKind, VolumeInfo

log = logging.getLogger("wkd.bus")


def volume_properties(info: VolumeInfo) -> dict[str, Any]:
    """Plain values of every org.wkd1.Volume property (the XML gives their types)."""
    m = info.mapping
    return {
        "Uuid": info.uuid,
        "Device": info.device,
        "MappedName": m.name if m else "",
        "MappedDevice": m.device if m else "",
        "Active": m is not None,
        "ReadOnly": m.read_only if m else False,
        "Kek": info.kek_label,
        "KekId": info.kek_id,
        "Cipher": info.cipher,
        "KeyBits": info.key_bits,
        "AutoUnlock": info.auto_unlock,
        "Label": info.label,
        "Created": info.created,
        "Condition": str(info.condition.value),
        "ConditionDetail": info.condition_detail,
    }


class VolumeCalls(Protocol):
    """What a Volume object's methods do (wkd/bus/calls.py); it passes its own path."""

    async def unlock(self, volume: object, options: dict[str, Variant]) -> VolumeInfo: ...

    async def lock(self, volume: object, options: dict[str, Variant]) -> VolumeInfo: ...

    async def rewrap(self, volume: object, new_kek: object,
                     options: dict[str, Variant]) -> VolumeInfo: ...


@exported(VOLUME)
class VolumeObject(ServiceInterface):
    """org.wkd1.Volume at /org/wkd1/volume/<uuid with '-' as '_'>."""

    def __init__(self, info: VolumeInfo, calls: VolumeCalls) -> None:
        super().__init__(VOLUME)
        self._props = volume_properties(info)
        self._calls = calls
        self.uuid = info.uuid
        self.path = volume_path(info.uuid)

    def property_value(self, name: str) -> Any:
        return self._props[name]

    def variants(self) -> dict[str, Variant]:
        return variants(API.interface(VOLUME), self._props)

    def update(self, info: VolumeInfo) -> None:
        """Take the backend's latest view; signal only what changed."""
        new = volume_properties(info)
        changed = {k: v for k, v in new.items() if self._props.get(k) != v}
        self._props = new
        if changed:
            self.emit_properties_changed(changed)

    @method(VOLUME, "Unlock")
    async def unlock(self, options: dict[str, Variant]) -> str:
        info = await self._calls.unlock(self.path, options)
        return info.mapping.device if info.mapping else ""

    @method(VOLUME, "Lock")
    async def lock(self, options: dict[str, Variant]) -> None:
        await self._calls.lock(self.path, options)

    @method(VOLUME, "Rewrap")
    async def rewrap(self, new_kek_label: str, options: dict[str, Variant]) -> None:
        await self._calls.rewrap(self.path, new_kek_label, options)


class ObjectTree:
    """The exported volume and job objects of one connection."""

    def __init__(self, bus: MessageBus, calls: VolumeCalls) -> None:
        self._bus = bus
        self._calls = calls
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.volumes: dict[str, VolumeObject] = {}

    # --- volumes ------------------------------------------------------------------------
    def on_event(self, event: VolumeEvent) -> None:
        """A backend subscriber; may be called from a worker thread."""
        self._in_loop(lambda: self._apply(event))

    def _in_loop(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    def _apply(self, event: VolumeEvent) -> None:
        try:
            if event.kind is VolumeEventKind.REMOVED or event.info is None:
                self.drop_volume(event.uuid)
            else:
                self.publish(event.info)
        except Exception:
            log.exception("could not apply volume event for %s", event.uuid)

    def publish(self, info: VolumeInfo) -> str:
        """Export (or refresh) the object of a volume; return its path."""
        obj = self.volumes.get(info.uuid)
        if obj is not None:
            obj.update(info)
            return obj.path
        obj = VolumeObject(info, self._calls)
        self.volumes[info.uuid] = obj
        self._bus.export(obj.path, obj)
        self._added(obj.path, {VOLUME: obj.variants()})
        return obj.path

    def drop_volume(self, uuid: str) -> None:
        obj = self.volumes.pop(uuid, None)
        if obj is not None:
            self._bus.unexport(obj.path, obj)
            self._removed(obj.path, [VOLUME])

    # --- jobs -----------------------------------------------------------------------------
    def on_progress(self, job: JobObject, done: int, total: int, current: str) -> None:
        """A backend progress callback; may be called from a worker thread."""
        self._in_loop(lambda: job.progress(done, total, current))

    def publish_job(self, job: JobObject) -> None:
        self._bus.export(job.path, job)
        self._added(job.path, {JOB: job.variants()})

    def unpublish_job(self, job: JobObject) -> None:
        self._bus.unexport(job.path, job)
        self._removed(job.path, [JOB])

    # --- ObjectManager signals --------------------------------------------------------------
    def _added(self, path: str, interfaces: dict[str, dict[str, Variant]]) -> None:
        self._bus.send(Message.new_signal(ROOT_PATH, OBJECT_MANAGER, "InterfacesAdded",
                                          "oa{sa{sv}}", [path, interfaces]))

    def _removed(self, path: str, interfaces: list[str]) -> None:
        self._bus.send(Message.new_signal(ROOT_PATH, OBJECT_MANAGER, "InterfacesRemoved",
                                          "oas", [path, interfaces]))

