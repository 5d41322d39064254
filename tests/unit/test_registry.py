"""The volume registry: atomic, coalesced writes; a corrupt file is not fatal."""

from __future__ import annotations

import json
from pathlib import Path

from wkd.registry import Registry


def test_put_flush_and_reload(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    assert reg.put("u1", "/dev/vdb", flush=False)
    assert not (tmp_path / "volumes.json").exists(), "flush=False must not write yet"
    assert not reg.put("u1", "/dev/vdb", flush=False), "no change, nothing to do"
    reg.flush()
    assert json.loads((tmp_path / "volumes.json").read_text())["volumes"] == {"u1": "/dev/vdb"}
    assert Registry(str(tmp_path)).get("u1") == "/dev/vdb"
    reg.forget("u1")
    assert Registry(str(tmp_path)).devices() == {}


def test_corrupt_registry_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "volumes.json").write_text("{not json")
    reg = Registry(str(tmp_path))
    assert reg.devices() == {}
    reg.put("u2", "/dev/vdc")
    assert Registry(str(tmp_path)).devices() == {"u2": "/dev/vdc"}
