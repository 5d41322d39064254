"""Read-only inspection of block devices: kind, users, signatures, device-mapper mappings.

Everything here reads sysfs, /proc and the device's first bytes; nothing writes. Format uses
it to refuse a device that is in use or carries data; the views use it to find the mappings
of a volume and what they sit on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from wkd import errors
from wkd.core.facts import DeviceFacts, DeviceKind, DmMapping, DmState
from wkd.run import run

SYSFS = Path("/sys")
LUKS_MAGIC = b"LUKS\xba\xbe"
# The LUKS2 secondary header sits at one of these offsets (LUKS2 on-disk format, §2: the
# primary header's size is 16 KiB by default but may be up to 4 MiB).
_LUKS2_SECONDARY_OFFSETS = (0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000,
                            0x200000, 0x400000)


def inspect(path: str, *, allow_files: bool) -> DeviceFacts:
    """Resolve `path` and check it is a usable device. Typed errors name the path only."""
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
    try:
        return int((sysfs_dir(rdev) / "size").read_text()) * 512
    except (OSError, ValueError):
        with open(path, "rb") as f:
            return f.seek(0, os.SEEK_END)


def sysfs_dir(rdev: int) -> Path:
    return SYSFS / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}"


def _devnum(text: str) -> int:
    major, _, minor = text.strip().partition(":")
    return os.makedev(int(major), int(minor))


def partitions(facts: DeviceFacts) -> list[tuple[str, int]]:
    """(kernel name, dev_t) of each partition of a whole disk (sysfs: a child directory with
    a "partition" file)."""
    if facts.kind is not DeviceKind.BLOCK:
        return []
    base = sysfs_dir(facts.rdev)
    out: list[tuple[str, int]] = []
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return out
    for entry in entries:
        try:
            if (base / entry / "partition").exists():
                out.append((entry, _devnum((base / entry / "dev").read_text())))
        except (OSError, ValueError):
            continue
    return out


def _holders(rdev: int) -> list[str]:
    try:
        return sorted(os.listdir(sysfs_dir(rdev) / "holders"))
    except OSError:
        return []


def _mounted(devnums: set[int], paths: set[str], mountinfo: str) -> list[str]:
    want = {f"{os.major(d)}:{os.minor(d)}" for d in devnums if d}
    found: list[str] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        # mountinfo: id parent major:minor root mountpoint opts ... - fstype source superopts
        if len(fields) < 10:
            continue
        try:
            source = fields[fields.index("-") + 2]
        except (ValueError, IndexError):
            source = ""
        if fields[2] in want or source in paths:
            found.append(f"mounted at {fields[4]}")
    return found


def _swaps(paths: set[str], devnums: set[int]) -> list[str]:
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return []
    found: list[str] = []
    for line in lines:
        name = line.split()[0] if line.split() else ""
        try:
            rdev = os.stat(name).st_rdev
        except OSError:
            rdev = 0
        if name in paths or (rdev and rdev in devnums):
            found.append(f"swap on {name}")
    return found


def _exclusively_opened(facts: DeviceFacts) -> bool:
    """True when another opener holds the block device exclusively (O_EXCL gives EBUSY):
    a mounted filesystem, a dm or md device on it or on one of its partitions, or a program
    such as another cryptsetup. The kernel refuses an exclusive open of a whole disk while
    any of its partitions is claimed (block/bdev.c, bd_may_claim)."""
    try:
        fd = os.open(facts.path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        return e.errno == errno.EBUSY
    os.close(fd)
    return False


def in_use(facts: DeviceFacts, mountinfo: str | None = None) -> tuple[str, ...]:
    """Why the device (or any partition of it) is in use; empty when it is free."""
    parts = partitions(facts)
    devnums = {facts.rdev, *(d for _n, d in parts)} - {0}
    paths = {facts.path, *(f"/dev/{n}" for n, _d in parts)}
    reasons = [f"held by {h}" for d in sorted(devnums) for h in _holders(d)]
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            mountinfo = ""
    reasons += _mounted(devnums, paths, mountinfo)
    reasons += _swaps(paths, devnums)
    if facts.kind is DeviceKind.BLOCK and not reasons and _exclusively_opened(facts):
        reasons.append("opened exclusively by another program")
    return tuple(reasons)


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


def _dm_mapping(entry: str) -> DmMapping | None:
    d = SYSFS / "block" / entry
    try:
        name = (d / "dm" / "name").read_text().strip()
        dm_uuid = (d / "dm" / "uuid").read_text().strip()
        dev = _devnum((d / "dev").read_text())
        slaves = tuple(sorted(os.listdir(d / "slaves")))
    except (OSError, ValueError):
        return None  # gone meanwhile, or not a dm device after all
    devs: list[int] = []
    files: list[str] = []
    for slave in slaves:
        # The link dangles once the disk under a mapping is gone; the name is then all
        # that is left, which is why both are kept.
        with contextlib.suppress(OSError, ValueError):
            devs.append(_devnum((d / "slaves" / slave / "dev").read_text()))
        try:
            backing = (SYSFS / "block" / slave / "loop" / "backing_file").read_text().strip()
            files.append(os.path.realpath(backing))
        except OSError:
            pass
    try:
        read_only = (d / "ro").read_text().strip() == "1"
    except OSError:
        read_only = False
    return DmMapping(name=name, dm_uuid=dm_uuid, node=f"/dev/{entry}", dev=dev,
                     backing_names=slaves, backing_devs=tuple(devs),
                     backing_files=tuple(files), read_only=read_only)


def dm_mappings() -> tuple[DmMapping, ...]:
    try:
        entries = sorted(e for e in os.listdir(SYSFS / "block") if e.startswith("dm-"))
    except OSError:
        return ()
    return tuple(m for m in map(_dm_mapping, entries) if m is not None)


def dm_state(available: bool) -> DmState:
    return DmState(available=available, mappings=dm_mappings() if available else ())


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
