"""The engine's two ports: the disk (and the state directory) and the HSM.

The engine decides nothing about bytes, sysfs or PKCS#11: it asks these ports, hands what
they report to the planners of wkd/core, and carries out the plans. `DiskPort` methods block
(sysfs, /proc, libcryptsetup, file writes) and are called by the engine in a worker thread,
one hop per call, so each is shaped to do one whole piece of work: look at the devices a view
needs and the dm state in one call, format in one call, activate in one call. wkd/disk
implements it for the local machine (`LocalDisk`); tests may implement it in memory.

The HSM port is `wkd.hsm.base.HsmBackend` (coroutines; the backend serialises its calls).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from wkd.core.facts import (
    Checkpoint,
    DeviceFacts,
    DmState,
    FormatFacts,
    FormatIntent,
    FormatObservation,
    FormatRequest,
    Header,
    MappingRecord,
    Probe,
    Survey,
)
from wkd.hsm.base import HsmBackend
from wkd.model import Mapping as MappingInfo
from wkd.secret import SecretKey
from wkd.token import WkdToken
from wkd.values import MappingName, VolumeUuid

__all__ = ["Checkpoint", "DiskPort", "FormatRequest", "HsmBackend", "Survey", "TokenSession"]

class TokenSession(Protocol):
    """One open header for a sequence of token writes (the rewrap protocol, reconciliation).
    Each write is one LUKS2 metadata update, atomic with respect to a crash."""

    def write_token(self, token_id: int | None, token: WkdToken) -> int: ...

    def remove_token(self, token_id: int) -> None: ...

    def verify_key(self, key: SecretKey) -> bool: ...

    def close(self) -> None: ...


class DiskPort(Protocol):
    # --- looking ----------------------------------------------------------------------
    def probe(self, path: str) -> Probe:
        """Inspect one device and read its header (trusted only if libcryptsetup loads it).
        Raises DeviceNotFound, NotABlockDevice."""

    def survey(self, paths: Iterable[str]) -> Survey:
        """Probe several devices and take the dm state, in one call."""

    def scan(self) -> list[Probe]:
        """Every block device carrying a LUKS2 header (loadable or damaged)."""

    def dm_state(self) -> DmState: ...

    # --- Format -----------------------------------------------------------------------
    def format_facts(self, path: str) -> FormatFacts: ...

    def format(self, request: FormatRequest, key: SecretKey, recovery: SecretKey | None,
               checkpoint: Checkpoint) -> Header:
        """Crash-atomic Format (wkd/disk/format.py); records and clears a FormatIntent.
        Raises DeviceInUse, StateUnwritable (device untouched), LuksError, ..."""

    def observe_format(self, intent: FormatIntent) -> FormatObservation: ...

    def roll_back_format(self, intent: FormatIntent) -> None: ...

    # --- keys and mappings ------------------------------------------------------------
    def verify_key(self, path: str, key: SecretKey) -> bool: ...

    def activate(self, device: DeviceFacts, name: MappingName, key: SecretKey, *,
                 read_only: bool, allow_discards: bool) -> MappingInfo | None:
        """Check `key` against the digest; if it matches, map the volume as `name` and return
        the mapping made. None when the key does not match."""

    def deactivate(self, name: str, *, deferred: bool) -> None: ...

    def open_tokens(self, path: str) -> TokenSession: ...

    # --- the state directory ----------------------------------------------------------
    def load_registry(self) -> dict[VolumeUuid, str]: ...

    def save_registry(self, volumes: Mapping[VolumeUuid, str]) -> None: ...

    def mapping_records(self) -> list[MappingRecord]: ...

    def add_mapping_record(self, record: MappingRecord) -> None: ...

    def remove_mapping_record(self, name: str) -> None: ...

    def format_intents(self) -> list[FormatIntent]: ...

    def remove_format_intent(self, uuid: VolumeUuid) -> None: ...
