"""The daemon's memory of known volumes: LUKS UUID -> last device path, in the state directory.

Nothing secret is stored here; the LUKS2 header is the source of truth about a volume, and a
lost or stale registry only means a rescan. Writes are atomic (temp file, fsync, rename) so a
crash leaves the old or the new file, never a torn one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("wkd.registry")


class Registry:
    def __init__(self, state_dir: str) -> None:
        self._path = Path(state_dir) / "volumes.json"
        self._devices: dict[str, str] = {}
        self._dirty = False
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            # A corrupt registry is not fatal: volumes are rediscovered by scanning.
            log.warning("ignoring unreadable volume registry %s: %s", self._path, e)
            return
        vols = data.get("volumes", {}) if isinstance(data, dict) else {}
        if isinstance(vols, dict):
            self._devices = {u: d for u, d in vols.items()
                             if isinstance(u, str) and isinstance(d, str)}

    def devices(self) -> dict[str, str]:
        return dict(self._devices)

    def get(self, uuid: str) -> str | None:
        return self._devices.get(uuid)

    def put(self, uuid: str, device: str, *, flush: bool = True) -> bool:
        """Record where a volume is; True when that changed anything. With flush=False the
        caller promises a later `flush()`."""
        if self._devices.get(uuid) == device:
            return False
        self._devices[uuid] = device
        self._dirty = True
        if flush:
            self.flush()
        return True

    def forget(self, uuid: str) -> None:
        if self._devices.pop(uuid, None) is not None:
            self._dirty = True
            self.flush()

    def flush(self) -> None:
        if self._dirty:
            self._save()
            self._dirty = False

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": 1, "volumes": self._devices}, indent=1, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".volumes.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
