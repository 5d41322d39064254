"""Plain values shared by the modules of wkd: frozen dataclasses and string enums, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wkd.values import KeySize, LuksLabel, MappingName

if TYPE_CHECKING:
    from wkd.secret import SecretKey


class TokenState(enum.StrEnum):
    # A staged token is being introduced by a rewrap and is not yet trusted for unlocking
    # unless every active token fails (docs/token-format.md, "Rewrap protocol").
    ACTIVE = "active"
    STAGED = "staged"


class Backend(enum.StrEnum):
    PKCS11 = "pkcs11"


class Mechanism(enum.StrEnum):
    # CKM_AES_KEY_WRAP_PAD (PKCS#11 v2.40 §2.14.4), i.e. RFC 5649 AES key wrap with padding.
    AES_KEY_WRAP_PAD = "aes-key-wrap-pad"


class HsmState(enum.StrEnum):
    READY = "ready"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class KekInfo:
    """A key-encryption key as listed by the HSM (never its value: it is not extractable)."""

    label: str
    key_id: str  # CKA_ID as lowercase hex
    key_bits: int


@dataclass(frozen=True, slots=True)
class HsmInfo:
    backend: Backend
    module: str  # path of the PKCS#11 module
    token_label: str
    manufacturer: str
    model: str
    software: bool  # True for SoftHSM2 or any token that says it is not hardware
    embedded: bool  # True for the daemon's own SoftHSM2 token in its state directory


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A volume key wrapped under a KEK. Not secret on disk, but still never logged or sent
    over the bus: the blob plus a stolen HSM PIN is all an attacker needs."""

    kek_label: str
    kek_id: str
    mechanism: Mechanism
    blob: bytes
    key_bytes: int  # length of the clear key the blob wraps

    def __repr__(self) -> str:
        return (
            f"WrappedKey(kek_label={self.kek_label!r}, kek_id={self.kek_id!r}, "
            f"mechanism={self.mechanism.value!r}, blob=<{len(self.blob)} bytes>, "
            f"key_bytes={self.key_bytes})"
        )


@dataclass(frozen=True, slots=True)
class Mapping:
    name: str
    device: str  # /dev/mapper/<name>
    read_only: bool


class VolumeCondition(enum.StrEnum):
    """Whether a volume's on-disk state can be acted on. Every view (ListVolumes, the Volume
    objects, GetManagedObjects, wkdctl status) shows the same condition, and operations on a
    volume that is not OK are refused with a typed error naming the reason."""

    OK = "ok"
    DAMAGED = "damaged"  # libcryptsetup refuses the header, or its wkd token is invalid
    DUPLICATE = "duplicate"  # two present devices carry this volume UUID


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    uuid: str
    device: str
    kek_label: str
    kek_id: str
    cipher: str  # e.g. "aes-xts-plain64"
    key_bits: int
    auto_unlock: bool
    created: str  # RFC 3339 UTC
    mapping: Mapping | None  # None when locked (or when mapping state is unknown)
    label: str = ""  # LUKS2 label, may be empty
    condition: VolumeCondition = VolumeCondition.OK
    # Why the condition is not OK, for people: names devices, never key material. D-Bus:
    # the Volume properties Condition and ConditionDetail.
    condition_detail: str = ""


class VolumeEventKind(enum.StrEnum):
    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class VolumeEvent:
    kind: VolumeEventKind
    uuid: str
    info: VolumeInfo | None  # None for REMOVED


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked, as the bus (or the process table) says: for logs and authorization."""

    uid: int
    pid: int | None = None
    bus_name: str | None = None


SYSTEM_CALLER = Caller(uid=0, pid=None, bus_name=None)


@dataclass(frozen=True, slots=True)
class FormatOptions:
    force: bool = False  # format even over an existing signature (never over a mapped/mounted one)
    auto_unlock: bool = False  # unlock when hot-plugged
    label: LuksLabel | None = None  # LUKS2 label
    key_size: KeySize | None = None  # None -> config default
    # Adds an argon2id keyslot the administrator holds. Locked memory, never repr'd; the
    # engine wipes it once the keyslot is written (or the Format fails).
    recovery_passphrase: SecretKey | None = None


@dataclass(frozen=True, slots=True)
class UnlockOptions:
    name: MappingName | None = None  # None -> "wkd-<uuid>"
    read_only: bool = False
    verify_only: bool = False  # check the HSM can open it; activate nothing
    allow_discards: bool = False


@dataclass(frozen=True, slots=True)
class LockOptions:
    deferred: bool = False  # defer removal until the last user closes it (dm deferred remove)
    # Lock a mapping wkd has no record of making (opened with cryptsetup, or before wkd kept
    # records); without it such a Lock is refused with ForeignMapping.
    force: bool = False


@dataclass(frozen=True, slots=True)
class RewrapAllResult:
    total: int
    rewrapped: int
    skipped: int  # already under the target KEK
    failed: tuple[tuple[str, str], ...]  # (uuid, error name)
