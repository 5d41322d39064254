"""Read-only inspection of block devices: kind, users, signatures, device-mapper mappings.

Everything here reads sysfs, /proc and the device's first bytes; nothing writes. The engine uses
it to refuse formatting a device that is in use or carries data, and to find the mapping of an
unlocked volume whatever name it was given.
"""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from wkd import errors
from wkd.run import run

SYSFS = Path("/sys")
LUKS_MAGIC = b"LUKS\xba\xbe"
# The LUKS2 secondary header sits at one of these offsets (LUKS2 on-disk format, §2: the
# primary header's size is 16 KiB by default but may be up to 4 MiB).
_LUKS2_SECONDARY_OFFSETS = (0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000,
                            0x200000, 0x400000)


class DeviceKind(enum.StrEnum):
    BLOCK = "block"
    FILE = "file"  # a regular image file, accepted only when the config allows it


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    path: str  # canonical path (symlinks resolved)
    kind: DeviceKind
    size: int
    rdev: int  # st_rdev for block devices, 0 for files


def inspect(path: str, *, allow_files: bool) -> DeviceFacts:
    """Resolve `path` and check it is a usable device. Typed errors name the path only."""
    if not path.startswith("/") or "\0" in path or len(path) > 4096:
        raise errors.InvalidArgument("a device must be given as an absolute path")
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except FileNotFoundError:
        raise errors.DeviceNotFound(f"{path}: no such device") from None
    except OSError as e:
        raise errors.DeviceNotFound(f"{path}: cannot be inspected ({e.strerror})") from None
    if stat.S_ISBLK(st.st_mode):
        return DeviceFacts(real, DeviceKind.BLOCK, _block_size(real, st.st_rdev), st.st_rdev)
    if stat.S_ISREG(st.st_mode) and allow_files:
        return DeviceFacts(real, DeviceKind.FILE, st.st_size, 0)
    what = "a regular file" if stat.S_ISREG(st.st_mode) else "not a block device"
    raise errors.NotABlockDevice(f"{path} is {what}; wkd manages block devices only")


def _block_size(path: str, rdev: int) -> int:
    sysdir = _sysfs_dir(rdev)
    try:
        return int((sysdir / "size").read_text()) * 512
    except (OSError, ValueError):
        with open(path, "rb") as f:
            return f.seek(0, os.SEEK_END)


def _sysfs_dir(rdev: int) -> Path:
    return SYSFS / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}"


def holders(facts: DeviceFacts) -> list[str]:
    """Kernel devices stacked on this one (dm-crypt, md, LVM): /sys/dev/block/M:m/holders."""
    if facts.kind is not DeviceKind.BLOCK:
        return []
    try:
        return sorted(os.listdir(_sysfs_dir(facts.rdev) / "holders"))
    except OSError:
        return []


def mounted(facts: DeviceFacts, mountinfo: str | None = None) -> bool:
    """True when the device (or, for a file, the file) is a mounted filesystem's source."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return False
    want = f"{os.major(facts.rdev)}:{os.minor(facts.rdev)}" if facts.rdev else None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        # mountinfo: id parent major:minor root mountpoint opts ... - fstype source superopts
        if want is not None and fields[2] == want:
            return True
        try:
            source = fields[fields.index("-") + 2]
        except (ValueError, IndexError):
            continue
        if source == facts.path:
            return True
    return False


def swap_in_use(facts: DeviceFacts) -> bool:
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[0] == facts.path for line in lines if line.split())


def has_luks_magic(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(6) == LUKS_MAGIC
    except OSError:
        return False


def signatures(facts: DeviceFacts) -> list[str]:
    """Names of the signatures found on the device (filesystems, RAID, LUKS, partition tables).

    blkid's low-level probe (-p) reads the device itself rather than the udev cache, and finds
    superblocks anywhere (e.g. md metadata at the end). The LUKS magic is checked directly too,
    including the secondary-header offsets, because a wiped primary is still a LUKS2 volume.
    """
    found: list[str] = []
    res = run(["blkid", "-p", "-o", "export", facts.path], check=False, timeout=30)
    # blkid exit 2: nothing found; 0: something found.
    if res.returncode == 0:
        for line in res.stdout.decode(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key in ("TYPE", "PTTYPE") and value:
                found.append(value)
    if "crypto_LUKS" not in found and _luks_magic_anywhere(facts.path):
        found.append("crypto_LUKS")
    return found


def _luks_magic_anywhere(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            if f.read(6) == LUKS_MAGIC:
                return True
            for off in _LUKS2_SECONDARY_OFFSETS:
                f.seek(off)
                if f.read(6) == b"SKUL\xba\xbe":
                    return True
    except OSError:
        return False
    return False


@dataclass(frozen=True, slots=True)
class DmDevice:
    name: str
    uuid: str
    node: str  # /dev/dm-N
    slaves: tuple[str, ...]


def dm_devices() -> list[DmDevice]:
    out: list[DmDevice] = []
    block = SYSFS / "block"
    try:
        entries = sorted(os.listdir(block))
    except OSError:
        return out
    for entry in entries:
        if not entry.startswith("dm-"):
            continue
        d = block / entry
        try:
            name = (d / "dm" / "name").read_text().strip()
            uuid = (d / "dm" / "uuid").read_text().strip()
            slaves = tuple(sorted(os.listdir(d / "slaves")))
        except OSError:
            continue
        out.append(DmDevice(name, uuid, f"/dev/{entry}", slaves))
    return out


def dm_uuid_matches_luks(dm_uuid: str, luks_uuid: str) -> bool:
    # libcryptsetup names its dm devices "CRYPT-LUKS2-<uuid without dashes>-<name>"
    # (lib/setup.c, crypt_activate_by_volume_key -> dm uuid), so the LUKS UUID finds the mapping
    # whatever name it was opened under.
    prefix = "CRYPT-LUKS2-" + luks_uuid.replace("-", "").lower() + "-"
    return dm_uuid.lower().startswith(prefix.lower())


def find_mapping_device(luks_uuid: str, dms: list[DmDevice] | None = None) -> DmDevice | None:
    """The active dm-crypt mapping of the LUKS2 volume with this UUID, if any. Pass `dms`
    (from one `dm_devices()` call) when looking up many volumes."""
    for dm in dm_devices() if dms is None else dms:
        if dm_uuid_matches_luks(dm.uuid, luks_uuid):
            return dm
    return None


def find_mapping(luks_uuid: str) -> str | None:
    """Name of the active dm-crypt mapping of the LUKS2 volume with this UUID, if any."""
    dm = find_mapping_device(luks_uuid)
    return None if dm is None else dm.name


def read_only(dm: DmDevice) -> bool:
    try:
        return (SYSFS / "block" / dm.node.removeprefix("/dev/") / "ro").read_text().strip() == "1"
    except OSError:
        return False


def dm_name_exists(name: str) -> bool:
    return any(dm.name == name for dm in dm_devices())


def block_devices() -> list[str]:
    """Device nodes of every block device the kernel knows, except device-mapper devices."""
    out: list[str] = []
    try:
        entries = sorted(os.listdir(SYSFS / "class" / "block"))
    except OSError:
        return out
    for entry in entries:
        if entry.startswith(("dm-", "ram", "zram")):
            continue
        node = f"/dev/{entry}"
        if os.path.exists(node):
            out.append(node)
    return out
