"""The per-volume and per-job D-Bus objects and the ObjectManager signals.

Thin: a VolumeObject holds the last VolumeInfo the engine published and forwards its methods
to the service (`VolumeOps`); a JobObject mirrors a RewrapAll task's progress. No method,
property or signal here carries key material: VolumeInfo has none, and RewrapAllResult only
counts and names volumes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, Protocol

from dbus_fast import Message, PropertyAccess, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import (
    ServiceInterface,
    dbus_method,
    dbus_property,
    dbus_signal,
)

from wkd.model import RewrapAllResult, VolumeInfo
from wkd.service_call import guarded

ROOT_PATH: Final = "/org/wkd1"
VOLUME_PREFIX: Final = ROOT_PATH + "/volume/"
JOB_PREFIX: Final = ROOT_PATH + "/job/"
MANAGER_IFACE: Final = "org.wkd1.Manager"
VOLUME_IFACE: Final = "org.wkd1.Volume"
JOB_IFACE: Final = "org.wkd1.Job"
OBJECT_MANAGER_IFACE: Final = "org.freedesktop.DBus.ObjectManager"

Str = Annotated[str, DBusSignature("s")]
Bool = Annotated[bool, DBusSignature("b")]
UInt = Annotated[int, DBusSignature("u")]
Double = Annotated[float, DBusSignature("d")]
ObjPath = Annotated[str, DBusSignature("o")]
Opts = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
ResultT = Annotated[list[Any], DBusSignature("(uuua(ss))")]
CompletedT = Annotated[list[Any], DBusSignature("bsuu")]
Void = Annotated[None, DBusSignature("")]

READ = PropertyAccess.READ


def volume_path(uuid: str) -> str:
    # Object path elements allow only [A-Za-z0-9_] (D-Bus spec, "Valid Object Paths").
    return VOLUME_PREFIX + uuid.replace("-", "_")


def uuid_from_path(path: str) -> str | None:
    if not path.startswith(VOLUME_PREFIX):
        return None
    return path[len(VOLUME_PREFIX):].replace("_", "-")


class VolumeOps(Protocol):
    """What a Volume object asks of the service; `volume` is the volume's UUID."""

    async def unlock_volume(self, volume: str, options: dict[str, Variant]) -> VolumeInfo: ...
    async def lock_volume(self, volume: str, options: dict[str, Variant]) -> None: ...
    async def rewrap_volume(self, volume: str, new_kek: str,
                            options: dict[str, Variant]) -> None: ...


def volume_properties(info: VolumeInfo) -> dict[str, Any]:
    """Plain values of every org.wkd1.Volume property (the D-Bus XML lists the types)."""
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
    }


VOLUME_SIGNATURES: Final = {
    "Uuid": "s", "Device": "s", "MappedName": "s", "MappedDevice": "s", "Active": "b",
    "ReadOnly": "b", "Kek": "s", "KekId": "s", "Cipher": "s", "KeyBits": "u",
    "AutoUnlock": "b", "Label": "s", "Created": "s",
}


class VolumeObject(ServiceInterface):
    """org.wkd1.Volume at /org/wkd1/volume/<uuid with '-' as '_'>."""

    def __init__(self, info: VolumeInfo, ops: VolumeOps) -> None:
        super().__init__(VOLUME_IFACE)
        self._props = volume_properties(info)
        self._ops = ops
        self.uuid = info.uuid
        self.path = volume_path(info.uuid)

    def variants(self) -> dict[str, Variant]:
        return {k: Variant(VOLUME_SIGNATURES[k], v) for k, v in self._props.items()}

    def update(self, info: VolumeInfo) -> None:
        """Take the engine's latest view; signal only what changed."""
        new = volume_properties(info)
        changed = {k: v for k, v in new.items() if self._props.get(k) != v}
        self._props = new
        if changed:
            self.emit_properties_changed(changed)

    # --- methods -------------------------------------------------------------------
    @dbus_method(name="Unlock")
    async def unlock(self, options: Opts) -> Str:
        async def body() -> str:
            info = await self._ops.unlock_volume(self.uuid, options)
            return info.mapping.device if info.mapping else ""

        return await guarded("Volume.Unlock", body)

    @dbus_method(name="Lock")
    async def lock(self, options: Opts) -> Void:
        await guarded("Volume.Lock", lambda: self._ops.lock_volume(self.uuid, options))

    @dbus_method(name="Rewrap")
    async def rewrap(self, new_kek_label: Str, options: Opts) -> Void:
        await guarded("Volume.Rewrap",
                      lambda: self._ops.rewrap_volume(self.uuid, new_kek_label, options))

    # --- properties ----------------------------------------------------------------
    @dbus_property(access=READ, name="Uuid")
    def uuid_prop(self) -> Str:
        return str(self._props["Uuid"])

    @dbus_property(access=READ, name="Device")
    def device(self) -> Str:
        return str(self._props["Device"])

    @dbus_property(access=READ, name="MappedName")
    def mapped_name(self) -> Str:
        return str(self._props["MappedName"])

    @dbus_property(access=READ, name="MappedDevice")
    def mapped_device(self) -> Str:
        return str(self._props["MappedDevice"])

    @dbus_property(access=READ, name="Active")
    def active(self) -> Bool:
        return bool(self._props["Active"])

    @dbus_property(access=READ, name="ReadOnly")
    def read_only(self) -> Bool:
        return bool(self._props["ReadOnly"])

    @dbus_property(access=READ, name="Kek")
    def kek(self) -> Str:
        return str(self._props["Kek"])

    @dbus_property(access=READ, name="KekId")
    def kek_id(self) -> Str:
        return str(self._props["KekId"])

    @dbus_property(access=READ, name="Cipher")
    def cipher(self) -> Str:
        return str(self._props["Cipher"])

    @dbus_property(access=READ, name="KeyBits")
    def key_bits(self) -> UInt:
        return int(self._props["KeyBits"])

    @dbus_property(access=READ, name="AutoUnlock")
    def auto_unlock(self) -> Bool:
        return bool(self._props["AutoUnlock"])

    @dbus_property(access=READ, name="Label")
    def label(self) -> Str:
        return str(self._props["Label"])

    @dbus_property(access=READ, name="Created")
    def created(self) -> Str:
        return str(self._props["Created"])


class JobObject(ServiceInterface):
    """org.wkd1.Job at /org/wkd1/job/<n>: one long operation (RewrapAll) and its progress."""

    def __init__(self, number: int, operation: str, started_by: int) -> None:
        super().__init__(JOB_IFACE)
        self.path = f"{JOB_PREFIX}{number}"
        self._operation = operation
        self._started_by = started_by
        self._state = "running"
        self._done = 0
        self._total = 0
        self._current = ""
        self._error = ""
        self._result: RewrapAllResult | None = None
        self.on_cancel: Callable[[], Awaitable[None]] | None = None

    @property
    def state(self) -> str:
        return self._state

    def variants(self) -> dict[str, Variant]:
        return {
            "Operation": Variant("s", self._operation),
            "StartedBy": Variant("u", self._started_by),
            "State": Variant("s", self._state),
            "Progress": Variant("d", self._progress()),
            "Done": Variant("u", self._done),
            "Total": Variant("u", self._total),
            "Current": Variant("s", self._current),
            "ErrorName": Variant("s", self._error),
            "Result": Variant("(uuua(ss))", self._result_value()),
        }

    def progress(self, done: int, total: int, current: str) -> None:
        changed: dict[str, Any] = {}
        if done != self._done:
            changed["Done"] = done
        if total != self._total:
            changed["Total"] = total
        if current != self._current:
            changed["Current"] = current
        self._done, self._total, self._current = done, total, current
        if changed:
            changed["Progress"] = self._progress()
            self.emit_properties_changed(changed)

    def finish(self, result: RewrapAllResult | None, error_name: str) -> None:
        self._result = result
        self._error = error_name
        success = result is not None and not result.failed and not error_name
        self._state = "completed" if success else "failed"
        if result is not None:
            self._total = result.total
            self._done = result.total
        self._current = ""
        self.emit_properties_changed({
            "State": self._state, "Done": self._done, "Total": self._total,
            "Progress": self._progress(), "Current": "", "ErrorName": self._error,
            "Result": self._result_value(),
        })
        failed = len(result.failed) if result is not None else 0
        self.completed(success, error_name, self._done, failed)

    def _progress(self) -> float:
        if self._state == "completed":
            return 1.0
        return self._done / self._total if self._total else 0.0

    def _result_value(self) -> list[Any]:
        r = self._result
        if r is None:
            return [0, 0, 0, []]
        return [r.total, r.rewrapped, r.skipped, [[u, n] for u, n in r.failed]]

    @dbus_signal(name="Completed")
    def completed(self, success: bool, error_name: str, done: int,
                  failed: int) -> CompletedT:
        return [success, error_name, done, failed]

    @dbus_property(access=READ, name="Operation")
    def operation(self) -> Str:
        return self._operation

    @dbus_property(access=READ, name="StartedBy")
    def started_by(self) -> UInt:
        return self._started_by

    @dbus_property(access=READ, name="State")
    def state_prop(self) -> Str:
        return self._state

    @dbus_property(access=READ, name="Progress")
    def progress_prop(self) -> Double:
        return self._progress()

    @dbus_property(access=READ, name="Done")
    def done(self) -> UInt:
        return self._done

    @dbus_property(access=READ, name="Total")
    def total(self) -> UInt:
        return self._total

    @dbus_property(access=READ, name="Current")
    def current(self) -> Str:
        return self._current

    @dbus_property(access=READ, name="ErrorName")
    def error_name(self) -> Str:
        return self._error

    @dbus_property(access=READ, name="Result")
    def result(self) -> ResultT:
        return self._result_value()


def interfaces_added(bus: MessageBus, path: str,
                     interfaces: dict[str, dict[str, Variant]]) -> None:
    """Send org.freedesktop.DBus.ObjectManager.InterfacesAdded from /org/wkd1.

    The D-Bus spec ("org.freedesktop.DBus.ObjectManager") has the manager object send these;
    dbus-fast sends them from the exported object's own path instead, which clients that
    match on the manager's path (GDBusObjectManagerClient, busctl monitor) would miss.
    """
    bus.send(Message.new_signal(ROOT_PATH, OBJECT_MANAGER_IFACE, "InterfacesAdded",
                                "oa{sa{sv}}", [path, interfaces]))


def interfaces_removed(bus: MessageBus, path: str, interfaces: list[str]) -> None:
    bus.send(Message.new_signal(ROOT_PATH, OBJECT_MANAGER_IFACE, "InterfacesRemoved",
                                "oas", [path, interfaces]))
