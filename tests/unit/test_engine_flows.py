"""The engine on an in-memory DiskPort and HSM: Unlock/Lock naming rules, mapping records,
duplicates and hot-unplug clean-up, with no device, no device-mapper and no HSM — what the
port makes testable where the host kernel cannot activate anything (the VM tier does it for
real)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import pytest

from tests.unit.core_helpers import U1, dev_t, probe
from wkd import errors
from wkd.config import load_config
from wkd.core.facts import DeviceFacts, DmMapping, DmState, MappingRecord, Probe, Survey
from wkd.engine import Engine
from wkd.model import (
    Backend,
    HsmInfo,
    KekInfo,
    LockOptions,
    UnlockOptions,
    VolumeCondition,
    VolumeEvent,
    VolumeEventKind,
    WrappedKey,
)
from wkd.model import (
    Mapping as MappingInfo,
)
from wkd.secret import SecretKey
from wkd.values import DevicePath, MappingName, VolumeUuid

VDB, VDC = "/dev/vdb", "/dev/vdc"


class FakeHsm:
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def info(self) -> HsmInfo:
        return HsmInfo(Backend.PKCS11, "fake", "fake", "", "", True, False)

    async def list_keks(self) -> list[KekInfo]:
        return [KekInfo("kek-a", "0a", 256)]

    async def get_kek(self, label: str) -> KekInfo:
        return KekInfo(label, "0a", 256)

    async def unwrap(self, wrapped: WrappedKey) -> SecretKey:
        return SecretKey.from_bytes(bytearray(os.urandom(wrapped.key_bytes)))


class FakeDisk:
    """Devices, dm mappings and the state directory, in memory; records the calls made."""

    def __init__(self, devices: Iterable[Probe]) -> None:
        self.devices = {p.device.path: p for p in devices}
        self.mappings: list[DmMapping] = []
        self.records: dict[str, MappingRecord] = {}
        self.records_writable = True
        self.calls: list[str] = []

    def probe(self, path: str) -> Probe:
        if path not in self.devices:
            raise errors.DeviceNotFound(f"{path}: no such device")
        return self.devices[path]

    def survey(self, paths: Iterable[str]) -> Survey:
        return Survey({p: self.devices[p] for p in paths if p in self.devices}, self.dm_state())

    def scan(self) -> list[Probe]:
        return list(self.devices.values())

    def dm_state(self) -> DmState:
        return DmState(available=True, mappings=tuple(self.mappings))

    def activate(self, device: DeviceFacts, name: MappingName, key: SecretKey, *,
                 read_only: bool, allow_discards: bool) -> MappingInfo:
        self.calls.append(f"activate {name}")
        uuid = self.devices[device.path].read.uuid
        assert uuid is not None
        self.mappings.append(dm_mapping(name, uuid, device))
        return MappingInfo(name=name, device=f"/dev/mapper/{name}", read_only=read_only)

    def deactivate(self, name: str, *, deferred: bool) -> None:
        self.calls.append(f"deactivate {name}{' deferred' if deferred else ''}")
        self.mappings = [m for m in self.mappings if m.name != name]

    def verify_key(self, path: str, key: SecretKey) -> bool:
        return True

    def load_registry(self) -> dict[VolumeUuid, str]:
        return {U1: VDB}

    def save_registry(self, volumes: Mapping[VolumeUuid, str]) -> None: ...

    def mapping_records(self) -> list[MappingRecord]:
        return list(self.records.values())

    def add_mapping_record(self, record: MappingRecord) -> None:
        self.calls.append(f"record {record.name}")
        if not self.records_writable:
            raise errors.StateUnwritable("cannot write mappings/x.json (No space left)")
        self.records[record.name] = record

    def remove_mapping_record(self, name: str) -> None:
        self.calls.append(f"forget {name}")
        self.records.pop(name, None)


def dm_mapping(name: str, uuid: VolumeUuid, device: DeviceFacts) -> DmMapping:
    return DmMapping(name=name, dm_uuid=f"CRYPT-LUKS2-{uuid.replace('-', '')}-{name}",
                     node="/dev/dm-0", dev=dev_t(254, 0),
                     backing_names=(device.path.removeprefix("/dev/"),),
                     backing_devs=(device.rdev,))


ORIGINAL = probe(VDB, rdev=dev_t(253, 16))
COPY = probe(VDC, rdev=dev_t(253, 32))


async def engine_on(*devices: Probe) -> tuple[Engine, FakeDisk]:
    disk = FakeDisk(devices)
    engine = Engine(FakeHsm(), disk, load_config(None))  # type: ignore[arg-type]
    await engine.start(discover=False)
    return engine, disk


async def test_unlock_records_before_it_activates_and_lock_removes_both() -> None:
    engine, disk = await engine_on(ORIGINAL)
    info = await engine.unlock(U1, UnlockOptions())
    name = "wkd-" + U1
    assert info.mapping is not None and info.mapping.name == name
    assert disk.calls == [f"record {name}", f"activate {name}"]
    assert (await engine.get_volume(U1)).mapping == info.mapping  # one view
    locked = await engine.lock(U1, LockOptions())
    assert locked.mapping is None and disk.mappings == [] and disk.records == {}


async def test_unlock_is_idempotent_and_another_name_is_an_error_naming_the_mapping() -> None:
    engine, disk = await engine_on(ORIGINAL)
    await engine.unlock(U1, UnlockOptions(name=MappingName("data")))
    again = await engine.unlock(DevicePath(VDB), UnlockOptions(name=MappingName("data")))
    assert again.mapping is not None and again.mapping.name == "data"
    with pytest.raises(errors.AlreadyUnlocked, match="data"):
        await engine.unlock(U1, UnlockOptions(name=MappingName("other")))
    assert [c for c in disk.calls if c.startswith("activate")] == ["activate data"]


async def test_lock_of_a_mapping_wkd_did_not_make_needs_force(
        caplog: pytest.LogCaptureFixture) -> None:
    engine, disk = await engine_on(ORIGINAL)
    disk.mappings.append(dm_mapping("theirs", U1, ORIGINAL.device))  # `cryptsetup open`
    with pytest.raises(errors.ForeignMapping, match="theirs"):
        await engine.lock(U1, LockOptions())
    assert disk.mappings, "a refused Lock removed the mapping"
    caplog.set_level(logging.INFO)
    await engine.lock(U1, LockOptions(force=True))
    assert disk.mappings == []
    assert any("not made by wkd" in r.getMessage() for r in caplog.records)


async def test_a_full_state_directory_does_not_stop_unlock(
        caplog: pytest.LogCaptureFixture) -> None:
    engine, disk = await engine_on(ORIGINAL)
    disk.records_writable = False
    info = await engine.unlock(U1, UnlockOptions())
    assert info.mapping is not None, "the mapping is made"
    assert any("Lock will need force" in r.getMessage() for r in caplog.records)
    with pytest.raises(errors.ForeignMapping):  # wkd cannot prove it made it
        await engine.lock(U1, LockOptions())


async def test_a_copy_beside_the_original_is_a_duplicate_for_every_call_by_uuid(
        caplog: pytest.LogCaptureFixture) -> None:
    engine, disk = await engine_on(ORIGINAL, COPY)
    await engine.scan()
    (listed,) = await engine.list_volumes()
    looked_up = await engine.get_volume(U1)
    assert listed == looked_up and listed.condition is VolumeCondition.DUPLICATE
    assert listed.device == VDB, "the registry keeps the recorded device"
    for call in (engine.unlock(U1, UnlockOptions()), engine.lock(U1, LockOptions())):
        with pytest.raises(errors.DuplicateVolume) as e:
            await call
        assert VDB in e.value.message and VDC in e.value.message
    with pytest.raises(errors.DuplicateVolume):  # hot-plug never picks one
        await engine.auto_unlock(DevicePath(VDC), UnlockOptions())
    assert not any(c.startswith("activate") for c in disk.calls)
    journal = [r.getMessage() for r in caplog.records if "carry the same UUID" in r.getMessage()]
    assert len(journal) == 1, "the duplicate is journaled once"
    # An administrator names one by path.
    info = await engine.unlock(DevicePath(VDB), UnlockOptions(name=MappingName("orig")))
    assert info.mapping is not None and info.mapping.name == "orig"


async def test_unplugging_a_copy_leaves_the_original_mapped() -> None:
    """Issue 10.3 on the engine: the clean-up goes through the engine, acts on the device
    that left, and the original's mapping survives the copy's plug and unplug."""
    engine, disk = await engine_on(ORIGINAL)
    await engine.unlock(U1, UnlockOptions(name=MappingName("orig")))
    events: list[VolumeEvent] = []
    engine.subscribe(events.append)
    disk.devices[VDC] = COPY
    added = await engine.device_added(DevicePath(VDC))
    assert added is not None and added.condition is VolumeCondition.DUPLICATE
    del disk.devices[VDC]
    await engine.device_left(VDC, dev_t(253, 32))
    assert [m.name for m in disk.mappings] == ["orig"] and "orig" in disk.records
    (info,) = await engine.list_volumes()
    assert info.condition is VolumeCondition.OK and info.mapping is not None
    assert [e.kind for e in events] == [VolumeEventKind.CHANGED, VolumeEventKind.CHANGED]
    # The original leaves: its mapping goes (deferred), with its record.
    del disk.devices[VDB]
    await engine.device_left(VDB, dev_t(253, 16))
    assert disk.mappings == [] and disk.records == {}
    assert "deactivate orig deferred" in disk.calls
    assert events[-1].kind is VolumeEventKind.REMOVED


async def test_a_damaged_volume_is_the_same_in_every_view_and_refused() -> None:
    engine, _disk = await engine_on(probe(VDB, damaged="its checksum does not verify"))
    (listed,) = await engine.list_volumes()
    assert listed == await engine.get_volume(U1) == await engine.get_volume(DevicePath(VDB))
    assert listed.condition is VolumeCondition.DAMAGED
    with pytest.raises(errors.VolumeDamaged):
        await engine.unlock(U1, UnlockOptions())
