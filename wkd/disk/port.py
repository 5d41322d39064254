"""`LocalDisk`: the engine's DiskPort on this machine's block devices and state directory.

Every method blocks; the engine calls each from a worker thread. The pieces live in their
own modules (devices: sysfs and /proc; headers: trusted header reads; luks2: libcryptsetup;
format: the crash-atomic Format; state: the state directory); this class only puts them
behind the port's methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from wkd import errors
from wkd.core.facts import (
    Checkpoint,
    DeviceFacts,
    DmState,
    FormatFacts,
    FormatIntent,
    FormatObservation,
    FormatRequest,
    Header,
    HeaderRead,
    MappingRecord,
    Probe,
    Survey,
)
from wkd.disk import devices, formatter, luks2
from wkd.disk.headers import HeaderCache
from wkd.disk.state import StateFiles
from wkd.model import Mapping as MappingInfo
from wkd.secret import SecretKey
from wkd.token import WkdToken, render_token
from wkd.values import MappingName, VolumeUuid

log = logging.getLogger("wkd.disk")


class LocalTokens:
    """A TokenSession on one libcryptsetup context: each token write updates its in-memory
    header too, so nothing needs loading again between the steps of a protocol."""

    def __init__(self, path: str) -> None:
        self._dev = luks2.Luks2Device.open(path)

    def write_token(self, token_id: int | None, token: WkdToken) -> int:
        return self._dev.token_json_set(token_id, render_token(token))

    def remove_token(self, token_id: int) -> None:
        self._dev.token_remove(token_id)

    def verify_key(self, key: SecretKey) -> bool:
        return self._dev.verify_volume_key(key)

    def close(self) -> None:
        self._dev.close()


class LocalDisk:
    def __init__(self, state_dir: str, *, allow_files: bool = False,
                 candidates: Callable[[], list[str]] = devices.block_devices) -> None:
        """`candidates` lists the device nodes a scan looks at (all block devices; tests
        restrict it to devices they made)."""
        self._allow_files = allow_files
        self._candidates = candidates
        self._headers = HeaderCache()
        self._state = StateFiles(state_dir)

    # --- looking ----------------------------------------------------------------------
    def _facts(self, path: str) -> DeviceFacts:
        return devices.inspect(path, allow_files=self._allow_files)

    def probe(self, path: str) -> Probe:
        facts = self._facts(path)
        return Probe(device=facts, read=self._headers.read(facts.path))

    def survey(self, paths: Iterable[str]) -> Survey:
        probes: dict[str, Probe] = {}
        for path in paths:
            try:
                probes[path] = self.probe(path)
            except (errors.DeviceNotFound, errors.NotABlockDevice):
                continue  # gone, or now something else: the views leave it out
        return Survey(probes=probes, dm=self.dm_state())

    def scan(self) -> list[Probe]:
        found: list[Probe] = []
        for node in self._candidates():
            try:
                probe = self.probe(node)
            except errors.WkdError:
                continue
            if probe.read.header is not None or probe.read.damaged:
                found.append(probe)
        return found

    def dm_state(self) -> DmState:
        return devices.dm_state(luks2.device_mapper_available())

    # --- Format -----------------------------------------------------------------------
    def format_facts(self, path: str) -> FormatFacts:
        facts = self._facts(path)
        return FormatFacts(device=facts, in_use=devices.in_use(facts),
                           signatures=tuple(devices.signatures(facts)))

    def format(self, request: FormatRequest, key: SecretKey, recovery: SecretKey | None,
               checkpoint: Checkpoint) -> Header:
        return formatter.format_device(request, key, recovery, self._state, checkpoint)

    def observe_format(self, intent: FormatIntent) -> FormatObservation:
        try:
            facts = self._facts(intent.device)
        except (errors.DeviceNotFound, errors.NotABlockDevice):
            return FormatObservation(present=False)
        if facts.rdev != intent.rdev:
            return FormatObservation(present=False)
        read = self._read_or_damaged(facts.path)
        digest = formatter.region_digest(facts.path, intent.region)
        foreign: tuple[str, ...] = ()
        if read.header is None and digest != intent.before:
            foreign = tuple(s for s in devices.signatures(facts) if s != "crypto_LUKS")
        return FormatObservation(present=True, read=read, region_digest=digest,
                                 foreign_signatures=foreign, in_use=devices.in_use(facts))

    def _read_or_damaged(self, path: str) -> HeaderRead:
        try:
            return self._headers.read(path)
        except errors.DeviceNotFound as e:
            return HeaderRead(path=path, damaged=str(e))

    def roll_back_format(self, intent: FormatIntent) -> None:
        formatter.roll_back(intent, self._facts(intent.device))
        self._state.remove_format_intent(intent.uuid)

    # --- keys and mappings ------------------------------------------------------------
    def verify_key(self, path: str, key: SecretKey) -> bool:
        with luks2.Luks2Device.open(path) as dev:
            return dev.verify_volume_key(key)

    def activate(self, device: DeviceFacts, name: MappingName, key: SecretKey, *,
                 read_only: bool, allow_discards: bool) -> MappingInfo | None:
        with luks2.Luks2Device.open(device.path) as dev:
            if not dev.verify_volume_key(key):
                return None
            dev.activate(name, key, read_only=read_only, allow_discards=allow_discards)
        return MappingInfo(name=name, device=f"/dev/mapper/{name}", read_only=read_only)

    def deactivate(self, name: str, *, deferred: bool) -> None:
        luks2.deactivate(name, deferred=deferred)

    def open_tokens(self, path: str) -> LocalTokens:
        return LocalTokens(path)

    # --- the state directory ----------------------------------------------------------
    def load_registry(self) -> dict[VolumeUuid, str]:
        return self._state.load_registry()

    def save_registry(self, volumes: Mapping[VolumeUuid, str]) -> None:
        self._state.save_registry(volumes)

    def mapping_records(self) -> list[MappingRecord]:
        return self._state.mapping_records()

    def add_mapping_record(self, record: MappingRecord) -> None:
        self._state.add_mapping_record(record)

    def remove_mapping_record(self, name: str) -> None:
        self._state.remove_mapping_record(name)

    def format_intents(self) -> list[FormatIntent]:
        return self._state.format_intents()

    def remove_format_intent(self, uuid: VolumeUuid) -> None:
        self._state.remove_format_intent(uuid)
