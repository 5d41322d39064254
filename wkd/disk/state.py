"""The daemon's own records in its root-only state directory.

    volumes.json          known volumes: LUKS UUID -> the device it was last recorded on
    mappings/<name>.json  mappings wkd made, this boot (what Lock and hot-unplug clean-up
                          may call "ours": a dm name or dm UUID anyone can choose proves
                          nothing)
    formats/<uuid>.json   Format intents: written before Format touches a device, removed
                          when it is done, so the next start finishes or rolls back one a
                          crash interrupted

Nothing secret is stored here (a Format intent holds the token, whose wrapped key the header
carries anyway). Each file is written atomically (temp file, fsync, rename, fsync of the
directory), so a crash leaves the old or the new file, never a torn one; one file per
mapping and per Format, so parallel boot-time `wkd attach` processes never overwrite each
other's records. A write that fails (full or read-only file system) raises StateUnwritable
naming the file; callers decide whether that stops an operation before it touches a disk
(Format) or only delays the bookkeeping (docs/design.md, "Resource exhaustion").
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wkd import errors
from wkd.core.facts import FormatIntent, MappingRecord
from wkd.token import parse_token, render_token
from wkd.values import LuksLabel, MappingName, VolumeUuid

log = logging.getLogger("wkd.state")

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_VERSION = 1


def boot_id() -> str:
    try:
        return Path(_BOOT_ID).read_text().strip()
    except OSError:
        return "unknown"


def _write_atomic(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise errors.StateUnwritable(
            f"cannot write {path} in the state directory ({e.strerror})") from None


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise errors.StateUnwritable(f"cannot remove {path} ({e.strerror})") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable state file %s: %s", path, e)
        return None


class StateFiles:
    def __init__(self, state_dir: str) -> None:
        self._dir = Path(state_dir)
        self._boot = boot_id()

    # --- volumes.json --------------------------------------------------------------------
    def load_registry(self) -> dict[VolumeUuid, str]:
        data = _read_json(self._dir / "volumes.json")
        vols = data.get("volumes", {}) if isinstance(data, dict) else {}
        out: dict[VolumeUuid, str] = {}
        if isinstance(vols, dict):
            for uuid, device in vols.items():
                try:
                    if isinstance(device, str) and device.startswith("/"):
                        out[VolumeUuid(uuid)] = device
                except errors.InvalidArgument:
                    continue  # not ours to interpret; dropped at the next save
        return out

    def save_registry(self, volumes: Mapping[VolumeUuid, str]) -> None:
        text = json.dumps({"version": _VERSION, "volumes": dict(volumes)}, indent=1,
                          sort_keys=True)
        _write_atomic(self._dir / "volumes.json", text)

    # --- mappings/ -----------------------------------------------------------------------
    def mapping_records(self) -> list[MappingRecord]:
        """This boot's records; those of earlier boots are ignored (their mappings are gone
        with the kernel that held them)."""
        out: list[MappingRecord] = []
        try:
            names = sorted(os.listdir(self._dir / "mappings"))
        except OSError:
            return out
        for name in names:
            if not name.endswith(".json"):
                continue
            data = _read_json(self._dir / "mappings" / name)
            if not isinstance(data, dict) or data.get("boot_id") != self._boot:
                continue
            try:
                out.append(MappingRecord(name=MappingName(data["name"]),
                                         uuid=VolumeUuid(data["uuid"]),
                                         device=str(data["device"]),
                                         backing_dev=int(data["backing_dev"])))
            except (KeyError, TypeError, ValueError, errors.InvalidArgument):
                log.warning("ignoring malformed mapping record %s", name)
        return out

    def add_mapping_record(self, record: MappingRecord) -> None:
        text = json.dumps({"version": _VERSION, "boot_id": self._boot, "name": record.name,
                           "uuid": record.uuid, "device": record.device,
                           "backing_dev": record.backing_dev}, sort_keys=True)
        _write_atomic(self._dir / "mappings" / f"{record.name}.json", text)

    def remove_mapping_record(self, name: str) -> None:
        _remove(self._dir / "mappings" / f"{MappingName(name)}.json")

    # --- formats/ ------------------------------------------------------------------------
    def format_intents(self) -> list[FormatIntent]:
        out: list[FormatIntent] = []
        try:
            names = sorted(os.listdir(self._dir / "formats"))
        except OSError:
            return out
        for name in names:
            if not name.endswith(".json"):
                continue
            data = _read_json(self._dir / "formats" / name)
            try:
                out.append(_intent_from(data))
            except (KeyError, TypeError, ValueError, errors.WkdError):
                log.warning("ignoring malformed Format record %s", name)
        return out

    def add_format_intent(self, intent: FormatIntent) -> None:
        text = json.dumps({
            "version": _VERSION, "device": intent.device, "rdev": intent.rdev,
            "uuid": intent.uuid, "token": render_token(intent.token), "label": intent.label,
            "recovery": intent.recovery, "region": intent.region, "before": intent.before},
            sort_keys=True)
        _write_atomic(self._dir / "formats" / f"{intent.uuid}.json", text)

    def remove_format_intent(self, uuid: VolumeUuid) -> None:
        _remove(self._dir / "formats" / f"{VolumeUuid(uuid)}.json")


def _intent_from(data: Any) -> FormatIntent:
    if not isinstance(data, dict):
        raise TypeError("not an object")
    label = data["label"]
    return FormatIntent(
        device=str(data["device"]), rdev=int(data["rdev"]), uuid=VolumeUuid(data["uuid"]),
        token=parse_token(data["token"]),
        label=LuksLabel(label) if label is not None else None,
        recovery=bool(data["recovery"]), region=int(data["region"]),
        before=str(data["before"]))
