"""systemd generator: one unlock unit per /etc/wkdtab entry (systemd.generator(7)).

    python3 -m wkd.system.generator NORMAL_DIR [EARLY_DIR LATE_DIR]

Modelled line for line on systemd-cryptsetup-generator (systemd 252), so a wkd volume behaves at
boot like a crypttab volume: for entry NAME it writes

  wkd-unlock@NAME.service          Type=oneshot, ExecStart=wkd attach NAME (no D-Bus: the
                                   system bus does not exist yet at cryptsetup.target time),
                                   ExecStop=wkd detach NAME
  dev-mapper-NAME.device.requires/ so a mount of /dev/mapper/NAME pulls the unlock in
  cryptsetup.target.requires/      (.wants/ with nofail; remote-cryptsetup.target with
                                   _netdev; nothing with noauto)
  <backing>.device.d/50-wkd-device-timeout.conf   with timeout= / x-systemd.device-timeout=
  dev-mapper-NAME.device.d/40-wkd-device-timeout.conf   JobTimeoutSec=infinity unless nofail/
                                   noauto: the wait is bounded by the backing device's and
                                   the unlock unit's own timeouts instead of 90 s in total

NAME is systemd-escaped in unit names (escape_name); docs/boot.md explains every line.
A malformed wkdtab line is reported on stderr (the journal/kmsg for generators) and skipped,
so one typo does not keep every other volume locked; the exit status is then 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from wkd.wkdtab import WKDTAB_PATH, WkdtabEntry, parse_wkdtab_lenient

WKD_BINARY: Final = "/usr/bin/wkd"
STATE_DIR: Final = "/var/lib/wkd"
UNIT_PREFIX: Final = "wkd-unlock@"
# The unlock unit's own time limit when wkdtab gives none: long enough for a slow HSM,
# short enough that a wedged one does not hold the boot for ever.
DEFAULT_UNLOCK_TIMEOUT: Final = 90.0
GENERATOR_NAME: Final = "wkd-generator"

# systemd.unit(5) "String Escaping": these bytes pass through unescaped ("." not first).
_VALID_CHARS: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                b"0123456789:_.")


# --- systemd string escaping -----------------------------------------------------------

def escape_name(text: str) -> str:
    """Escape a string for use in a unit name, like `systemd-escape TEXT`.

    "/" becomes "-"; a leading "." and every byte outside [A-Za-z0-9:_.] (so "-" and "\\"
    too) becomes "\\xNN" of its UTF-8 byte (systemd src/basic/unit-name.c, do_escape()).
    """
    out: list[str] = []
    for index, byte in enumerate(text.encode("utf-8")):
        if byte == ord("/"):
            out.append("-")
        elif (index == 0 and byte == ord(".")) or byte not in _VALID_CHARS:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(chr(byte))
    return "".join(out)


def escape_path(path: str) -> str:
    """Escape a file system path, like `systemd-escape --path PATH`.

    The path is simplified first (duplicate and trailing slashes, "." components dropped);
    the root is "-"; ".." is refused, as unit_name_path_escape() refuses unnormalized paths.
    """
    if not path.startswith("/"):
        raise ValueError(f"not an absolute path: {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path {path!r} contains '..'")
    if not parts:
        return "-"
    return escape_name("/".join(parts))


def unit_name_from_path(path: str, suffix: str) -> str:
    return escape_path(path) + suffix


def unlock_unit_name(mapping_name: str) -> str:
    return f"{UNIT_PREFIX}{escape_name(mapping_name)}.service"


def format_timespan(seconds: float) -> str:
    """Seconds as a systemd.time(7) span; 0 means no limit ("infinity")."""
    if seconds <= 0:
        return "infinity"
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


# --- the files for one entry -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GeneratedFile:
    path: str  # relative to the generator output directory
    content: str | None = None  # file content, or None for a symlink
    symlink_to: str | None = None


def _quote_arg(text: str) -> str:
    # Mapping names are limited to [A-Za-z0-9#+-.:=@_] (wkd.names), so no quote, backslash
    # or "%" specifier can occur; the single quotes keep the command line unambiguous.
    return "'" + text + "'"


def unit_files(entry: WkdtabEntry, *, wkdtab_path: str = WKDTAB_PATH,
               binary: str = WKD_BINARY) -> list[GeneratedFile]:
    """Everything the generator writes for one wkdtab entry, as values (no I/O)."""
    unit = unlock_unit_name(entry.name)
    device_unit = unit_name_from_path(entry.device_node, ".device")
    mapper_unit = unit_name_from_path(entry.mapped_device, ".device")
    target = "remote-cryptsetup.target" if entry.netdev else "cryptsetup.target"
    header = (f"# Automatically generated by {GENERATOR_NAME} "
              f"from {wkdtab_path} line {entry.line}\n")

    lines = [
        header,
        "[Unit]",
        "Description=Unlock wkd volume %I",
        "Documentation=man:wkd(8) file:/usr/share/doc/wkd/boot.md",
        f"SourcePath={wkdtab_path}",
        "DefaultDependencies=no",
        "IgnoreOnIsolate=true",
        "After=cryptsetup-pre.target systemd-udevd-kernel.socket",
        # The embedded SoftHSM2 token lives in the state directory and is written on login:
        # it needs a writable root and a mounted /var before the engine can run.
        "After=systemd-remount-fs.service",
        f"RequiresMountsFor={STATE_DIR}",
        "Before=blockdev@dev-mapper-%i.target",
        "Wants=blockdev@dev-mapper-%i.target",
    ]
    if entry.netdev:
        lines += ["After=remote-fs-pre.target network-online.target",
                  "Wants=network-online.target"]
    lines.append("Conflicts=umount.target")
    if not entry.nofail:
        # A nofail volume must not hold up the boot: no ordering against the target
        # (the same choice systemd-cryptsetup-generator makes).
        lines.append(f"Before={target}")
    lines += [f"BindsTo={device_unit}", f"After={device_unit}", "Before=umount.target"]
    lines += [f"Before={u}" for u in entry.before]
    lines += [f"After={u}" for u in entry.after]

    timeout = entry.timeout if entry.timeout is not None else DEFAULT_UNLOCK_TIMEOUT
    attach = f"{binary} attach {_quote_arg(entry.name)}"
    if wkdtab_path != WKDTAB_PATH:
        attach += f" --wkdtab {_quote_arg(wkdtab_path)}"
    lines += [
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        f"TimeoutSec={format_timespan(timeout)}",
        # libcryptsetup puts the volume key in the thread keyring only while the dm table is
        # loaded; nothing needs to outlive the process, so a private session keyring.
        "KeyringMode=private",
        "OOMScoreAdjust=500",
        # The HSM PIN, if the administrator stored one in /etc/credstore (or as an encrypted
        # credential through a drop-in); without it `wkd attach` uses the embedded token's
        # PIN file in the state directory. A missing credential looked up by name is not an
        # error (systemd.exec(5), LoadCredential=).
        "LoadCredential=wkd-pin",
        f"ExecStart={attach}",
        f"ExecStop={binary} detach {_quote_arg(entry.name)}",
    ]
    files = [GeneratedFile(unit, "\n".join(lines) + "\n")]

    link = f"../{unit}"
    files.append(GeneratedFile(f"{mapper_unit}.requires/{unit}", symlink_to=link))
    if not entry.noauto:
        kind = "wants" if entry.nofail else "requires"
        files.append(GeneratedFile(f"{target}.{kind}/{unit}", symlink_to=link))
        if not entry.nofail:
            files.append(GeneratedFile(
                f"{mapper_unit}.d/40-wkd-device-timeout.conf",
                f"{header}\n[Unit]\nJobTimeoutSec=infinity\n"))
    device_timeout = entry.effective_device_timeout
    if device_timeout is not None:
        files.append(GeneratedFile(
            f"{device_unit}.d/50-wkd-device-timeout.conf",
            f"{header}\n[Unit]\nJobRunningTimeoutSec={format_timespan(device_timeout)}\n"))
    return files


def generate(entries: Sequence[WkdtabEntry], *, wkdtab_path: str = WKDTAB_PATH,
             binary: str = WKD_BINARY) -> list[GeneratedFile]:
    files: list[GeneratedFile] = []
    for entry in entries:
        files.extend(unit_files(entry, wkdtab_path=wkdtab_path, binary=binary))
    return files


def write_files(files: Sequence[GeneratedFile], dest: str) -> None:
    """Create the files and symlinks below `dest` (a generator output directory)."""
    for item in files:
        full = os.path.join(dest, item.path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if item.symlink_to is not None:
            if os.path.lexists(full):
                os.unlink(full)
            os.symlink(item.symlink_to, full)
        else:
            with open(full, "w", encoding="utf-8") as f:
                f.write(item.content or "")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 3):
        print(f"usage: {GENERATOR_NAME} NORMAL_DIR [EARLY_DIR LATE_DIR]", file=sys.stderr)
        return 2
    # $WKDTAB points at another table, for tests (like $SYSTEMD_CRYPTTAB for crypttab).
    wkdtab_path = os.environ.get("WKDTAB", WKDTAB_PATH)
    try:
        with open(wkdtab_path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{GENERATOR_NAME}: cannot read {wkdtab_path}: {exc}", file=sys.stderr)
        return 1
    entries, errors = parse_wkdtab_lenient(text, path=wkdtab_path)
    for error in errors:
        print(f"{GENERATOR_NAME}: {error}; entry skipped", file=sys.stderr)
    write_files(generate(entries, wkdtab_path=wkdtab_path), args[0])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
