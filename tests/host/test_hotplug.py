"""Hot-plug handling on the real engine, driven by synthetic udev events (the host has no
udevd; real QEMU hot-plug is a VM-tier scenario)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.host import engine_helpers as h
from wkd.engine import Engine
from wkd.hotplug import Hotplug
from wkd.model import FormatOptions, VolumeEvent, VolumeEventKind
from wkd.udev import BlockEvent

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
    info = await engine.format(str(img), None, FormatOptions(auto_unlock=auto))
    # Forget it, as if the disk had never been seen by this daemon.
    await engine.remove_device(info.uuid)
    return str(img), info.uuid


def _add(devnode: str, uuid: str, seq: int) -> BlockEvent:
    return BlockEvent("add", devnode, "crypto_LUKS", uuid, seq)


async def test_marked_volume_is_registered_and_unlock_attempted(
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
    assert marked_uuid in known, "the auto-unlock volume was not picked up"
    assert plain_uuid not in known, "a volume not marked for auto-unlock was touched"
    assert next(e.kind for e in events if e.uuid == marked_uuid) is VolumeEventKind.ADDED
    # On this host activation is impossible; the attempt is made and fails with its typed
    # error, logged (the VM tier shows the mapping really appears).
    attempted = [r for r in caplog.records if "auto-unlock of" in r.getMessage()]
    assert attempted and "device-mapper" in attempted[0].getMessage()


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
    assert any("auto-unlock of" in r.getMessage() for r in caplog.records)


async def test_noauto_wkdtab_entry_wins_over_the_token_flag(engine: Engine,
                                                            tmp_path: Path) -> None:
    marked, uuid = await _formatted(engine, tmp_path, "held", True)
    tab = tmp_path / "wkdtab"
    tab.write_text(f"held UUID={uuid} noauto\n")
    hot = Hotplug(engine, wkdtab=str(tab), start=False)
    try:
        hot.monitor._dispatch(_add(marked, uuid, 1))
        await hot.drain()
    finally:
        hot.close()
    assert uuid not in {v.uuid for v in await engine.list_volumes()}
