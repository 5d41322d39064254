"""Hot-plug handling on the real engine, driven by synthetic udev events (the host has no
udevd; real QEMU hot-plug is a VM-tier scenario)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.host import engine_helpers as h
from wkd.core.hotplug import BlockEvent
from wkd.engine import Engine
from wkd.model import FormatOptions, VolumeCondition, VolumeEvent, VolumeEventKind
from wkd.system.hotplug import Hotplug
from wkd.values import DevicePath

_skip = h.need_tools()
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    eng = h.new_engine(tmp_path / "state")
    await eng.start()
    try:
        yield eng
    finally:
        await eng.stop()


async def _formatted(engine: Engine, tmp_path: Path, name: str, auto: bool) -> tuple[str, str]:
    img = h.make_image(tmp_path / f"{name}.img")
    info = await engine.format(DevicePath(str(img)), None, FormatOptions(auto_unlock=auto))
    return str(img), info.uuid


def _add(devnode: str, uuid: str, seq: int) -> BlockEvent:
    return BlockEvent("add", devnode, "crypto_LUKS", uuid, seq)


def _attempts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "auto-unlock of" in r.getMessage()]


async def test_marked_volume_is_unlocked_and_an_unmarked_one_only_listed(
        engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marked, marked_uuid = await _formatted(engine, tmp_path, "marked", True)
    plain, plain_uuid = await _formatted(engine, tmp_path, "plain", False)
    events: list[VolumeEvent] = []
    engine.subscribe(events.append)
    hot = Hotplug(engine, wkdtab=str(tmp_path / "no-wkdtab"), start=False)
    try:
        caplog.set_level(logging.INFO)
        hot.monitor._dispatch(_add(marked, marked_uuid, 1))  # feed an event
        hot.monitor._dispatch(_add(plain, plain_uuid, 2))
        await hot.drain()
    finally:
        hot.close()
    known = {v.uuid for v in await engine.list_volumes()}
    assert {marked_uuid, plain_uuid} <= known
    assert {e.kind for e in events if e.uuid == marked_uuid} == {VolumeEventKind.CHANGED}
    # On this host activation is impossible; the attempt is made and fails with its typed
    # error, logged (the VM tier shows the mapping really appears). The unmarked volume is
    # not even attempted.
    attempted = _attempts(caplog)
    assert len(attempted) == 1 and marked in attempted[0] and "device-mapper" in attempted[0]


async def test_wkdtab_entry_makes_an_unmarked_volume_auto_unlock(
        engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plain, uuid = await _formatted(engine, tmp_path, "listed", False)
    tab = tmp_path / "wkdtab"
    tab.write_text(f"listed UUID={uuid} read-only\n"
                   "other UUID=00000000-0000-0000-0000-000000000000 noauto\n")
    hot = Hotplug(engine, wkdtab=str(tab), start=False)
    try:
        caplog.set_level(logging.INFO)
        hot.monitor._dispatch(_add(plain, uuid, 1))
        await hot.drain()
    finally:
        hot.close()
    assert uuid in {v.uuid for v in await engine.list_volumes()}
    assert _attempts(caplog)


async def test_noauto_wkdtab_entry_wins_over_the_token_flag(
        engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marked, uuid = await _formatted(engine, tmp_path, "held", True)
    tab = tmp_path / "wkdtab"
    tab.write_text(f"held UUID={uuid} noauto\n")
    hot = Hotplug(engine, wkdtab=str(tab), start=False)
    try:
        caplog.set_level(logging.INFO)
        hot.monitor._dispatch(_add(marked, uuid, 1))
        await hot.drain()
    finally:
        hot.close()
    assert not _attempts(caplog)


async def test_a_copy_plugged_beside_the_original_is_a_duplicate_never_auto_unlocked(
        engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 10.2: an exact copy (same UUID) appears while the original is present."""
    original, uuid = await _formatted(engine, tmp_path, "orig", True)
    copy = str(tmp_path / "copy.img")
    shutil.copyfile(original, copy)
    hot = Hotplug(engine, wkdtab=str(tmp_path / "no-wkdtab"), start=False)
    try:
        caplog.set_level(logging.INFO)
        hot.monitor._dispatch(_add(copy, uuid, 1))
        await hot.drain()
        (info,) = [v for v in await engine.list_volumes() if v.uuid == uuid]
        assert info.condition is VolumeCondition.DUPLICATE
        assert info.device == original, "the recorded device stays the volume's device"
        assert original in info.condition_detail and copy in info.condition_detail
        attempted = _attempts(caplog)
        assert attempted and "DuplicateVolume" not in attempted[0]
        assert "carry" in attempted[0], attempted
        journal = [r for r in caplog.records if "carry the same UUID" in r.getMessage()]
        assert journal and original in journal[0].getMessage() and copy in journal[0].getMessage()
        # The copy leaves: the volume is itself again, on the original.
        hot.monitor._dispatch(BlockEvent("remove", copy, None, None, 2))
        await hot.drain()
        (info,) = [v for v in await engine.list_volumes() if v.uuid == uuid]
        assert info.condition is VolumeCondition.OK and info.device == original
    finally:
        hot.close()
