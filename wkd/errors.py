"""The error tree of wkd.

Every failure a caller can meet is a leaf of `WkdError` carrying a stable D-Bus error name
(`org.wkd1.Error.*`) and a `wkdctl` exit code. The D-Bus adapter maps these once at the
boundary; anything that is not a `WkdError` reaches callers as `org.wkd1.Error.Failed` with no
internals.

Messages must never contain key material, PINs or wrapped blobs: they are shown to callers and
written to the journal. Build them from device paths, UUIDs, labels and counts only.
"""

from __future__ import annotations

from typing import ClassVar

ERROR_PREFIX = "org.wkd1.Error."


class WkdError(Exception):
    """Base of every error wkd reports to a caller."""

    dbus_name: ClassVar[str] = ERROR_PREFIX + "Failed"
    # wkdctl exit codes, grouped by kind (sysexits.h spirit): 1 generic, 2 usage/input,
    # 3 not found, 4 busy/state, 5 HSM, 6 authorization, 7 data/integrity.
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Failed(WkdError):
    """An unexpected internal failure; details went to the log, not to the caller."""


# --- input ------------------------------------------------------------------------------
class InvalidArgument(WkdError):
    dbus_name = ERROR_PREFIX + "InvalidArgument"
    exit_code = 2


class InvalidName(InvalidArgument):
    """A mapping name or KEK label that is not safe or not well-formed."""

    dbus_name = ERROR_PREFIX + "InvalidName"


class UnknownOption(InvalidArgument):
    dbus_name = ERROR_PREFIX + "UnknownOption"


class InvalidConfig(WkdError):
    dbus_name = ERROR_PREFIX + "InvalidConfig"
    exit_code = 2


# --- devices and volumes ----------------------------------------------------------------
class DeviceNotFound(WkdError):
    dbus_name = ERROR_PREFIX + "DeviceNotFound"
    exit_code = 3


class NotABlockDevice(WkdError):
    dbus_name = ERROR_PREFIX + "NotABlockDevice"
    exit_code = 2


class DeviceInUse(WkdError):
    """The device is mapped, mounted or held by another device; Format refuses it."""

    dbus_name = ERROR_PREFIX + "DeviceInUse"
    exit_code = 4


class DeviceHasSignature(WkdError):
    """The device carries a filesystem, RAID, LUKS or partition-table signature."""

    dbus_name = ERROR_PREFIX + "DeviceHasSignature"
    exit_code = 4


class VolumeNotFound(WkdError):
    dbus_name = ERROR_PREFIX + "VolumeNotFound"
    exit_code = 3


class NotAWkdVolume(WkdError):
    """A LUKS2 device without a wkd token, or not LUKS2 at all."""

    dbus_name = ERROR_PREFIX + "NotAWkdVolume"
    exit_code = 3


class InvalidToken(WkdError):
    """A wkd token whose JSON does not match the schema (docs/token-format.md)."""

    dbus_name = ERROR_PREFIX + "InvalidToken"
    exit_code = 7


class VolumeBusy(WkdError):
    """The mapping is open (mounted or held) and cannot be locked now."""

    dbus_name = ERROR_PREFIX + "VolumeBusy"
    exit_code = 4


class MappingNameInUse(WkdError):
    """A device-mapper device of that name exists and belongs to something else."""

    dbus_name = ERROR_PREFIX + "MappingNameInUse"
    exit_code = 4


class NotUnlocked(WkdError):
    dbus_name = ERROR_PREFIX + "NotUnlocked"
    exit_code = 4


class VolumeDamaged(WkdError):
    """libcryptsetup refuses the volume's header, or its only wkd tokens are invalid: wkd
    shows it as damaged in every view and acts on it in no way."""

    dbus_name = ERROR_PREFIX + "VolumeDamaged"
    exit_code = 7


class DuplicateVolume(WkdError):
    """Two present devices carry the volume's UUID; the message names both. Name one by its
    device path."""

    dbus_name = ERROR_PREFIX + "DuplicateVolume"
    exit_code = 4


class AlreadyUnlocked(WkdError):
    """The volume is mapped under another name than the one asked for; the message names it."""

    dbus_name = ERROR_PREFIX + "AlreadyUnlocked"
    exit_code = 4


class ForeignMapping(WkdError):
    """The volume's mapping was not made by wkd (no record of it this boot); Lock needs the
    force option to remove it."""

    dbus_name = ERROR_PREFIX + "ForeignMapping"
    exit_code = 4


class StateUnwritable(WkdError):
    """The state directory is full or read-only; nothing was written to any device."""

    dbus_name = ERROR_PREFIX + "StateUnwritable"
    exit_code = 4


class DeviceMapperUnavailable(WkdError):
    """The kernel offers no device-mapper (no /dev/mapper/control)."""

    dbus_name = ERROR_PREFIX + "DeviceMapperUnavailable"
    exit_code = 4


class LuksError(WkdError):
    """libcryptsetup refused an operation; the message names the call and errno."""

    dbus_name = ERROR_PREFIX + "LuksError"
    exit_code = 7


class KeyMismatch(WkdError):
    """An unwrapped key does not match the volume's LUKS2 digest."""

    dbus_name = ERROR_PREFIX + "KeyMismatch"
    exit_code = 7


# --- HSM --------------------------------------------------------------------------------
class HsmError(WkdError):
    dbus_name = ERROR_PREFIX + "HsmError"
    exit_code = 5


class HsmUnavailable(HsmError):
    dbus_name = ERROR_PREFIX + "HsmUnavailable"


class HsmLoginFailed(HsmError):
    dbus_name = ERROR_PREFIX + "HsmLoginFailed"


class KekNotFound(HsmError):
    dbus_name = ERROR_PREFIX + "KekNotFound"
    exit_code = 3


class KekExists(HsmError):
    dbus_name = ERROR_PREFIX + "KekExists"
    exit_code = 4


class UnwrapFailed(HsmError):
    """The HSM refused to unwrap: wrong KEK or tampered blob (PKCS#11 gives no finer cause)."""

    dbus_name = ERROR_PREFIX + "UnwrapFailed"
    exit_code = 7


# --- authorization and limits -----------------------------------------------------------
class NotAuthorized(WkdError):
    dbus_name = ERROR_PREFIX + "NotAuthorized"
    exit_code = 6


class LimitExceeded(WkdError):
    """A bound the daemon keeps so that no client can degrade service for others: pending
    calls per client, running jobs, the size of a call (docs/dbus-api.md, "Limits")."""

    dbus_name = ERROR_PREFIX + "LimitExceeded"
    exit_code = 4


def all_errors() -> list[type[WkdError]]:
    """Every error class, for documentation and the test that names stay unique."""
    seen: list[type[WkdError]] = []
    stack: list[type[WkdError]] = [WkdError]
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen
