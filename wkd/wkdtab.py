"""/etc/wkdtab: the volumes to unlock at boot, in a crypttab(5)-like format.

    # name      device                                      options
    data        UUID=4f6c2a8e-3c1b-4d0e-9a57-0d1f3c2b1a00   nofail,discard
    scratch     /dev/disk/by-id/nvme-EXAMPLE-part2          read-only,timeout=30

One entry per line: a mapping name (the volume appears as /dev/mapper/<name>), the device, and
optionally comma-separated options. "#" starts a comment line. The device is a /dev path or a
tag UUID=, PARTUUID=, LABEL=, PARTLABEL= resolved through /dev/disk/by-* like fstab and
crypttab do. There is no key-file column (the key comes from the HSM); a crypttab-style line
with "none" or "-" in the third column is accepted so existing lines can be copied.

Options (docs/boot.md has the full table):
    nofail          boot does not fail (and does not wait) if this volume cannot be unlocked
    noauto          not unlocked at boot nor on hot-plug; `systemctl start` still works
    read-only       map read-only (alias: readonly)
    discard         pass discards (TRIM) through dm-crypt (allow_discards)
    timeout=T       give up after T (seconds, or a systemd time span: 90s, 2min)
    _netdev         the HSM is reached over the network: order after network-online.target
    luks            accepted and ignored (wkd volumes are always LUKS2)
    x-systemd.device-timeout=T   how long to wait for the device only
    x-systemd.before=U, x-systemd.after=U   extra ordering for the generated unit
    x-...           any other x- option is kept and ignored, for other tools (as in fstab)

Parsing is pure: `parse_wkdtab` takes text, returns frozen entries or raises InvalidConfig
naming the file and line. Only `load_wkdtab` and `WkdtabEntry.resolve_device` touch files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final

from wkd.errors import DeviceNotFound, InvalidConfig, InvalidName, VolumeNotFound
from wkd.values import MappingName

WKDTAB_PATH: Final = "/etc/wkdtab"

_TAGS: Final = {
    "UUID": "by-uuid",
    "PARTUUID": "by-partuuid",
    "LABEL": "by-label",
    "PARTLABEL": "by-partlabel",
}
_FLAGS: Final = {
    "nofail": "nofail",
    "noauto": "noauto",
    "auto": "auto",
    "read-only": "read_only",
    "readonly": "read_only",
    "discard": "discard",
    "_netdev": "netdev",
    "luks": "luks",
}
_TIMESPAN_UNITS: Final = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}
_TIMESPAN_PART: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)")
# udev's encode_devnode_name keeps these plus alphanumerics and multi-byte UTF-8
# (systemd src/shared/device-nodes.c); everything else becomes \xNN in /dev/disk/by-* names.
_DEVNODE_SAFE: Final = frozenset("#+-.:=@_")


@dataclass(frozen=True, slots=True)
class WkdtabEntry:
    name: str
    device: str  # as written: "/dev/sdb1", "UUID=...", ...
    device_node: str  # the path to wait for: /dev/sdb1, /dev/disk/by-uuid/...
    read_only: bool = False
    discard: bool = False
    nofail: bool = False
    noauto: bool = False
    netdev: bool = False
    timeout: float | None = None  # seconds; 0 = no limit (systemd's "infinity")
    device_timeout: float | None = None  # x-systemd.device-timeout=
    before: tuple[str, ...] = ()  # x-systemd.before=
    after: tuple[str, ...] = ()  # x-systemd.after=
    extra_options: tuple[str, ...] = ()  # other x-* options, kept verbatim
    line: int = 0

    @property
    def mapped_device(self) -> str:
        return f"/dev/mapper/{self.name}"

    @property
    def uuid(self) -> str | None:
        """The LUKS UUID when the device is given as UUID=, else None."""
        tag, _, value = self.device.partition("=")
        return value if tag == "UUID" and not self.device.startswith("/") else None

    @property
    def effective_device_timeout(self) -> float | None:
        return self.device_timeout if self.device_timeout is not None else self.timeout

    def resolve_device(self) -> str:
        """The device node the entry names now, symlinks (/dev/disk/by-*) resolved.

        The one method here that touches the file system; raises DeviceNotFound when the
        node does not exist (yet).
        """
        path = os.path.realpath(self.device_node)
        if not os.path.exists(path):
            raise DeviceNotFound(f"{self.device} ({self.device_node}) for wkdtab entry "
                                 f"{self.name!r} does not exist")
        return path

    def matches(self, devnode: str, uuid: str | None) -> bool:
        """Does a (hot-plugged) device with this node and LUKS UUID belong to this entry?"""
        if self.uuid is not None:
            return uuid is not None and uuid.lower() == self.uuid.lower()
        return devnode == self.device_node


def parse_timespan(text: str) -> float:
    """Parse a systemd.time(7) time span ("90", "90s", "1min 30s", "infinity") into seconds.

    "infinity" and 0 both mean "no limit" and are returned as 0.0, as systemd treats a zero
    job timeout as disabled.
    """
    value = text.strip().lower()
    if value == "infinity":
        return 0.0
    if not value:
        raise ValueError("empty time span")
    total = 0.0
    pos = 0
    while pos < len(value):
        match = _TIMESPAN_PART.match(value, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"invalid time span {text!r}")
        number, unit = match.groups()
        if unit not in _TIMESPAN_UNITS:
            raise ValueError(f"unknown time unit {unit!r} in {text!r}")
        total += float(number) * _TIMESPAN_UNITS[unit]
        pos = match.end()
        while pos < len(value) and value[pos] == " ":
            pos += 1
    return total


def encode_devnode_name(value: str) -> str:
    """Encode a tag value the way udev names /dev/disk/by-label/ etc. links."""
    out = []
    for ch in value:
        if (ch.isascii() and ch.isalnum()) or ch in _DEVNODE_SAFE or ord(ch) > 0x7F:
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}")
    return "".join(out)


def device_node(spec: str) -> str:
    """Resolve a device field to the node systemd waits for; ValueError if malformed."""
    if spec.startswith("/"):
        if not spec.startswith("/dev/") or spec.endswith("/") or "/../" in spec + "/":
            raise ValueError(f"device path {spec!r} is not a node under /dev/")
        return spec
    tag, sep, value = spec.partition("=")
    if not sep or tag not in _TAGS:
        raise ValueError(f"device {spec!r} is neither a /dev path nor "
                         f"{'=, '.join(_TAGS)}= tag")
    if not value:
        raise ValueError(f"empty {tag}= value")
    return f"/dev/disk/{_TAGS[tag]}/{encode_devnode_name(value)}"


@dataclass(frozen=True, slots=True)
class _Options:
    read_only: bool = False
    discard: bool = False
    nofail: bool = False
    noauto: bool = False
    netdev: bool = False
    timeout: float | None = None
    device_timeout: float | None = None
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    extra_options: tuple[str, ...] = ()


def _parse_options(text: str) -> _Options:
    flags: set[str] = set()
    timeout: float | None = None
    device_timeout: float | None = None
    before: list[str] = []
    after: list[str] = []
    extra: list[str] = []
    for raw in text.split(","):
        option = raw.strip()
        if not option:
            raise ValueError("empty option (doubled or trailing comma)")
        key, sep, value = option.partition("=")
        if key in _FLAGS:
            if sep:
                raise ValueError(f"option '{key}' takes no value")
            flags.add(_FLAGS[key])
        elif key == "timeout":
            timeout = _timespan_option(key, value, sep)
        elif key == "x-systemd.device-timeout":
            device_timeout = _timespan_option(key, value, sep)
        elif key in ("x-systemd.before", "x-systemd.after"):
            if not value:
                raise ValueError(f"option '{key}' needs a unit name")
            (before if key.endswith("before") else after).append(value)
        elif key.startswith("x-"):
            extra.append(option)
        else:
            raise ValueError(f"unknown option '{key}'")
    if {"auto", "noauto"} <= flags:
        raise ValueError("options 'auto' and 'noauto' contradict each other")
    return _Options(read_only="read_only" in flags, discard="discard" in flags,
                    nofail="nofail" in flags, noauto="noauto" in flags,
                    netdev="netdev" in flags, timeout=timeout, device_timeout=device_timeout,
                    before=tuple(before), after=tuple(after), extra_options=tuple(extra))


def _timespan_option(key: str, value: str, sep: str) -> float:
    if not sep or not value:
        raise ValueError(f"option '{key}' needs a value, e.g. {key}=90s")
    try:
        seconds = parse_timespan(value)
    except ValueError as exc:
        raise ValueError(f"option '{key}': {exc}") from None
    return seconds


def parse_wkdtab(text: str, *, path: str = WKDTAB_PATH) -> tuple[WkdtabEntry, ...]:
    """Parse wkdtab text; raise InvalidConfig("<path>:<line>: <reason>") on the first error."""
    entries, errors = parse_wkdtab_lenient(text, path=path)
    if errors:
        raise errors[0]
    return entries


def parse_wkdtab_lenient(text: str, *, path: str = WKDTAB_PATH
                         ) -> tuple[tuple[WkdtabEntry, ...], tuple[InvalidConfig, ...]]:
    """Parse every good line and collect an error for each bad one.

    The generator uses this so one typo does not keep every other volume locked at boot
    (systemd-cryptsetup-generator also skips a bad crypttab line and carries on). A duplicate
    name is an error on the later line; the first entry stays.
    """
    entries: list[WkdtabEntry] = []
    errors: list[InvalidConfig] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entry = _parse_line(line, lineno)
        except ValueError as exc:
            errors.append(InvalidConfig(f"{path}:{lineno}: {exc}"))
            continue
        if entry.name in seen:
            errors.append(InvalidConfig(f"{path}:{lineno}: duplicate name {entry.name!r} "
                                        f"(first on line {seen[entry.name]})"))
            continue
        seen[entry.name] = lineno
        entries.append(entry)
    return tuple(entries), tuple(errors)


def _parse_line(line: str, lineno: int) -> WkdtabEntry:
    fields = line.split()
    if len(fields) < 2:
        raise ValueError("expected 'name device [options]'")
    if len(fields) > 4:
        raise ValueError(f"too many fields ({len(fields)}); expected 'name device [options]'")
    if len(fields) == 4:
        # crypttab's third column is the key file; wkd has none (the HSM holds the KEK).
        if fields[2] not in ("-", "none"):
            raise ValueError(f"unexpected key-file field {fields[2]!r}: wkd volumes take "
                             "their key from the HSM; write 'none' or drop the field")
        del fields[2]
    elif len(fields) == 3 and fields[2] in ("-", "none"):
        del fields[2]
    name, device = fields[0], fields[1]
    try:
        name = MappingName(name)
    except InvalidName as exc:
        raise ValueError(str(exc)) from None
    node = device_node(device)
    opts = _parse_options(fields[2]) if len(fields) == 3 else _Options()
    return WkdtabEntry(name=name, device=device, device_node=node, read_only=opts.read_only,
                       discard=opts.discard, nofail=opts.nofail, noauto=opts.noauto,
                       netdev=opts.netdev, timeout=opts.timeout,
                       device_timeout=opts.device_timeout, before=opts.before,
                       after=opts.after, extra_options=opts.extra_options, line=lineno)


def load_wkdtab(path: str = WKDTAB_PATH) -> tuple[WkdtabEntry, ...]:
    """Read and parse a wkdtab file; a missing file is an empty table."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return ()
    except UnicodeDecodeError as exc:
        raise InvalidConfig(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InvalidConfig(f"{path}: cannot read: {exc.strerror}") from None
    return parse_wkdtab(text, path=path)


def load_wkdtab_entry(name: str, path: str = WKDTAB_PATH) -> WkdtabEntry:
    """The entry `name`, for `wkd attach`: parsed leniently, like the generator does.

    A typo on another line must not keep this volume locked at boot: the generator already
    skipped the bad line and created units for the good ones, so attach has to accept them
    too. Raises VolumeNotFound when there is no such (well-formed) entry; the message then
    names the malformed lines, as one of them may be the entry meant.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise VolumeNotFound(f"{path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise InvalidConfig(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InvalidConfig(f"{path}: cannot read: {exc.strerror}") from None
    entries, errors = parse_wkdtab_lenient(text, path=path)
    for entry in entries:
        if entry.name == name:
            return entry
    detail = f"; malformed lines: {'; '.join(str(e) for e in errors)}" if errors else ""
    raise VolumeNotFound(f"{path} has no entry named {name!r}{detail}")
