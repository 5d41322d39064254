"""The D-Bus adapter: org.wkd1 on the system bus (docs/dbus-api.md, dbus/org.wkd1.xml).

Thin by design (STYLE: dasbus/sdbus habit): each handler decodes its arguments, asks the
Authorizer, calls the Engine, and maps errors. The Engine imports nothing from D-Bus.

Error mapping happens once, in `service_call.guarded`: a wkd.errors.WkdError reaches the
caller under its own org.wkd1.Error.* name and message; anything else is logged with its
traceback and reaches the caller as org.wkd1.Error.Failed with a fixed message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final

from dbus_fast import BusType, DBusError, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

import wkd
from wkd import busopts
from wkd.authz import Action, Authorizer
from wkd.engine import Engine
from wkd.errors import Failed, InvalidArgument, KekNotFound, WkdError
from wkd.model import Caller, HsmInfo, RewrapAllResult, VolumeEvent, VolumeEventKind, VolumeInfo
from wkd.names import validate_kek_label, validate_uuid
from wkd.service_call import (
    check_string,
    current_call,
    guarded,
    make_recorder,
    read_secret_fd,
)
from wkd.service_objects import (
    JOB_IFACE,
    MANAGER_IFACE,
    READ,
    ROOT_PATH,
    VOLUME_IFACE,
    VOLUME_PREFIX,
    Bool,
    JobObject,
    ObjPath,
    Opts,
    Str,
    Void,
    VolumeObject,
    interfaces_added,
    interfaces_removed,
    uuid_from_path,
    volume_path,
)

log = logging.getLogger(__name__)

BUS_NAME: Final = "org.wkd1"
# How long a finished job object stays on the bus so that a client can read its outcome.
JOB_LINGER_SECONDS: Final = 300.0

KekList = Annotated[list[list[Any]], DBusSignature("a(ssu)")]
PathList = Annotated[list[str], DBusSignature("ao")]


class _Bus(MessageBus):
    """dbus-fast's bus, minus its ObjectManager signals for our subtree.

    dbus-fast emits InterfacesAdded/Removed from the exported object's own path on every
    export; the D-Bus spec wants them from the ObjectManager's path (/org/wkd1), which
    service_objects.interfaces_added does. Dropping dbus-fast's copy avoids clients seeing
    two. (dbus-fast itself answers GetManagedObjects and lists the ObjectManager interface
    in every node's introspection.)
    """

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if path.startswith(ROOT_PATH + "/"):
            return
        super()._emit_interface_added(path, interface)

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if path.startswith(ROOT_PATH + "/"):
            return
        super()._emit_interface_removed(path, removed_interfaces)


class Service:
    """The operations behind the bus objects, and the registry of exported objects."""

    def __init__(self, engine: Engine, authorizer: Authorizer, bus: MessageBus) -> None:
        self.engine = engine
        self.authz = authorizer
        self.bus = bus
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.volumes: dict[str, VolumeObject] = {}
        self.jobs: dict[str, JobObject] = {}
        self._job_numbers = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.hsm_info: HsmInfo | None = None

    # --- threading: engine callbacks may come from its worker thread -------------------
    def _in_loop(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self.loop.call_soon_threadsafe(fn)

    # --- object registry ----------------------------------------------------------------
    def on_event(self, event: VolumeEvent) -> None:
        self._in_loop(lambda: self._apply_event(event))

    def _apply_event(self, event: VolumeEvent) -> None:
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
        obj = VolumeObject(info, self)
        self.volumes[info.uuid] = obj
        self.bus.export(obj.path, obj)
        interfaces_added(self.bus, obj.path, {VOLUME_IFACE: obj.variants()})
        return obj.path

    def drop_volume(self, uuid: str) -> None:
        obj = self.volumes.pop(uuid, None)
        if obj is not None:
            self.bus.unexport(obj.path, obj)
            interfaces_removed(self.bus, obj.path, [VOLUME_IFACE])

    # --- helpers ----------------------------------------------------------------------
    async def authorize(self, action: Action, common: busopts.Common) -> Caller:
        call = current_call()
        return await self.authz.check(
            call.sender, action, interactive=common.interactive or call.allow_interactive)

    @staticmethod
    def volume_arg(volume: str) -> str:
        """Accept a device path, a LUKS UUID or a volume object path; give the engine a
        device path or a UUID."""
        check_string(volume, "volume")
        if volume.startswith(VOLUME_PREFIX):
            uuid = uuid_from_path(volume)
            return validate_uuid(uuid)
        if volume.startswith("/"):
            return volume
        if volume.upper().startswith("UUID="):
            volume = volume[5:]
        try:
            return validate_uuid(volume.lower())
        except InvalidArgument:
            raise InvalidArgument(
                "volume must be a device path (/dev/...), a LUKS UUID or a volume object "
                "path (/org/wkd1/volume/...)"
            ) from None

    @staticmethod
    def kek_arg(label: str, what: str = "KEK label") -> str:
        check_string(label, what)
        return validate_kek_label(label)

    # --- operations ---------------------------------------------------------------------
    async def create_kek(self, label: str, options: dict[str, Variant]) -> str:
        label = self.kek_arg(label)
        common = busopts.no_options(options, "CreateKek")
        caller = await self.authorize(Action.MANAGE_KEK, common)
        kek = await self.engine.create_kek(label, caller=caller)
        return kek.key_id

    async def list_keks(self, options: dict[str, Variant]) -> list[list[Any]]:
        busopts.no_options(options, "ListKeks")
        return [[k.label, k.key_id, k.key_bits] for k in await self.engine.list_keks()]

    async def format(self, device: str, kek_label: str, options: dict[str, Variant]) -> str:
        check_string(device, "device")
        if not device.startswith("/"):
            raise InvalidArgument("device must be an absolute path such as /dev/sdb")
        kek: str | None = self.kek_arg(kek_label) if kek_label else None
        opts = busopts.format_options(options, read_secret_fd)
        caller = await self.authorize(Action.FORMAT, busopts.common(options))
        info = await self.engine.format(device, kek, opts, caller=caller)
        return self.publish(info)

    async def unlock_volume(self, volume: str, options: dict[str, Variant]) -> VolumeInfo:
        target = self.volume_arg(volume)
        opts = busopts.unlock_options(options)
        caller = await self.authorize(Action.UNLOCK, busopts.common(options))
        info = await self.engine.unlock(target, opts, caller=caller)
        self.publish(info)
        return info

    async def lock_volume(self, volume: str, options: dict[str, Variant]) -> None:
        target = self.volume_arg(volume)
        opts = busopts.lock_options(options)
        caller = await self.authorize(Action.LOCK, busopts.common(options))
        info = await self.engine.lock(target, opts, caller=caller)
        self.publish(info)

    async def rewrap_volume(self, volume: str, new_kek: str,
                            options: dict[str, Variant]) -> None:
        target = self.volume_arg(volume)
        label = self.kek_arg(new_kek, "new KEK label")
        common = busopts.no_options(options, "Rewrap")
        caller = await self.authorize(Action.REWRAP, common)
        info = await self.engine.rewrap(target, label, caller=caller)
        self.publish(info)

    async def rewrap_all(self, from_kek: str, to_kek: str,
                         options: dict[str, Variant]) -> str:
        src = self.kek_arg(from_kek, "source KEK label")
        dst = self.kek_arg(to_kek, "target KEK label")
        common = busopts.no_options(options, "RewrapAll")
        caller = await self.authorize(Action.REWRAP, common)
        # Refuse an unknown target before creating a job, so the mistake is a typed error on
        # the call itself (the source may be gone already when resuming a rotation).
        if dst not in {k.label for k in await self.engine.list_keks()}:
            raise KekNotFound(f"no KEK labelled {dst!r} in the HSM")
        job = JobObject(next(self._job_numbers), "rewrap-all", caller.uid)
        self.jobs[job.path] = job
        self.bus.export(job.path, job)
        interfaces_added(self.bus, job.path, {JOB_IFACE: job.variants()})
        task = asyncio.create_task(self._run_rewrap_all(job, src, dst, caller))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job.path

    async def _run_rewrap_all(self, job: JobObject, src: str, dst: str,
                              caller: Caller) -> None:
        def on_progress(done: int, total: int, current: str) -> None:
            self._in_loop(lambda: job.progress(done, total, current))

        result: RewrapAllResult | None = None
        error_name = ""
        try:
            result = await self.engine.rewrap_all(src, dst, caller=caller,
                                                  on_progress=on_progress)
        except WkdError as e:
            error_name = e.dbus_name
            log.warning("rewrap-all %s -> %s failed: %s", src, dst, e.message)
        except Exception:
            error_name = Failed.dbus_name
            log.exception("internal error in rewrap-all")
        # Progress callbacks queued from a worker thread land before the final state.
        await asyncio.sleep(0)
        job.finish(result, error_name)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(JOB_LINGER_SECONDS)
        self._drop_job(job)

    def _drop_job(self, job: JobObject) -> None:
        if self.jobs.pop(job.path, None) is not None:
            self.bus.unexport(job.path, job)
            interfaces_removed(self.bus, job.path, [JOB_IFACE])

    async def list_volumes(self, options: dict[str, Variant]) -> list[str]:
        busopts.no_options(options, "ListVolumes")
        infos = await self.engine.list_volumes()
        return [self.publish(info) for info in infos]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class Manager(ServiceInterface):
    """org.wkd1.Manager at /org/wkd1."""

    def __init__(self, svc: Service) -> None:
        super().__init__(MANAGER_IFACE)
        self._svc = svc

    @dbus_method(name="CreateKek")
    async def create_kek(self, label: Str, options: Opts) -> Str:
        return await guarded("CreateKek", lambda: self._svc.create_kek(label, options))

    @dbus_method(name="ListKeks")
    async def list_keks(self, options: Opts) -> KekList:
        return await guarded("ListKeks", lambda: self._svc.list_keks(options))

    @dbus_method(name="Format")
    async def format(self, device: Str, kek_label: Str, options: Opts) -> ObjPath:
        return await guarded("Format", lambda: self._svc.format(device, kek_label, options))

    @dbus_method(name="Unlock")
    async def unlock(self, volume: Str, options: Opts) -> ObjPath:
        async def body() -> str:
            info = await self._svc.unlock_volume(volume, options)
            return volume_path(info.uuid)

        return await guarded("Unlock", body)

    @dbus_method(name="Lock")
    async def lock(self, volume: Str, options: Opts) -> Void:
        await guarded("Lock", lambda: self._svc.lock_volume(volume, options))

    @dbus_method(name="Rewrap")
    async def rewrap(self, volume: Str, new_kek_label: Str, options: Opts) -> Void:
        await guarded("Rewrap", lambda: self._svc.rewrap_volume(volume, new_kek_label, options))

    @dbus_method(name="RewrapAll")
    async def rewrap_all(self, from_kek_label: Str, to_kek_label: Str,
                         options: Opts) -> ObjPath:
        return await guarded(
            "RewrapAll", lambda: self._svc.rewrap_all(from_kek_label, to_kek_label, options))

    @dbus_method(name="ListVolumes")
    async def list_volumes(self, options: Opts) -> PathList:
        return await guarded("ListVolumes", lambda: self._svc.list_volumes(options))

    # --- properties ---------------------------------------------------------------------
    @dbus_property(access=READ, name="Version")
    def version(self) -> Str:
        return wkd.__version__

    @dbus_property(access=READ, name="HsmState")
    def hsm_state(self) -> Str:
        return str(self._svc.engine.hsm_state.value)

    @dbus_property(access=READ, name="HsmSoftware")
    def hsm_software(self) -> Bool:
        info = self._svc.hsm_info
        return bool(info.software) if info else False

    @dbus_property(access=READ, name="HsmEmbedded")
    def hsm_embedded(self) -> Bool:
        info = self._svc.hsm_info
        return bool(info.embedded) if info else False

    @dbus_property(access=READ, name="HsmToken")
    def hsm_token(self) -> Str:
        info = self._svc.hsm_info
        return info.token_label if info else ""

    @dbus_property(access=READ, name="HsmModel")
    def hsm_model(self) -> Str:
        info = self._svc.hsm_info
        return f"{info.manufacturer} {info.model}".strip() if info else ""


@dataclass
class ServiceHandle:
    """What `serve` returns: the running service and how to stop it."""

    bus: MessageBus
    service: Service
    unsubscribe: Callable[[], None]

    async def close(self) -> None:
        self.unsubscribe()
        await self.service.close()
        if self.bus.connected:
            with contextlib.suppress(Exception):
                await self.bus.release_name(BUS_NAME)
            self.bus.disconnect()
        with contextlib.suppress(Exception):
            await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def wait_closed(self) -> None:
        # Shielded: dbus-fast awaits its one disconnect future directly, so cancelling a
        # waiter (as the daemon does on SIGTERM) would cancel that future and break the
        # bus's own shutdown (release_name then raised CancelledError).
        with contextlib.suppress(Exception):
            await asyncio.shield(self.bus.wait_for_disconnect())  # type: ignore[no-untyped-call]


async def serve(engine: Engine, bus_address: str | None, *,
                authorizer: Authorizer | None = None) -> ServiceHandle:
    """Connect, export /org/wkd1 and every known volume, then take the name org.wkd1.

    The name is requested last, so no caller can reach a half-built service. The engine
    must be started already.
    """
    if bus_address:
        bus = _Bus(bus_address=bus_address, negotiate_unix_fd=True)
    else:
        bus = _Bus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
    try:
        await bus.connect()
    except Exception as e:
        raise Failed(f"cannot connect to the bus {bus_address or '(system bus)'}: "
                     f"{type(e).__name__}: {e}") from e
    authorizer = authorizer or Authorizer()
    authorizer.bind(bus)
    svc = Service(engine, authorizer, bus)
    bus.add_message_handler(make_recorder(frozenset({MANAGER_IFACE, VOLUME_IFACE,
                                                     JOB_IFACE})))
    try:
        svc.hsm_info = await engine.hsm_info()
    except WkdError as e:
        log.warning("HSM information unavailable: %s", e.message)
    bus.export(ROOT_PATH, Manager(svc))
    # Subscribe before enumerating (STYLE principle 6): a volume that appears in between is
    # published by the event, and publishing twice is harmless.
    unsubscribe = engine.subscribe(svc.on_event)
    try:
        for info in await engine.list_volumes():
            svc.publish(info)
        try:
            reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        except DBusError as e:
            raise Failed(f"cannot own the bus name {BUS_NAME}: {e.text} "
                         "(the bus policy lets only root own it)") from None
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise Failed(f"the bus name {BUS_NAME} is owned by another process "
                         "(is another wkd running?)")
    except BaseException:
        unsubscribe()
        bus.disconnect()
        raise
    return ServiceHandle(bus=bus, service=svc, unsubscribe=unsubscribe)


__all__ = ["BUS_NAME", "Manager", "Service", "ServiceHandle", "serve"]
