"""The boot-time subcommands of `wkd`, as systemd units run them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.host import engine_helpers as h
from wkd.disk import luks2
from wkd.model import FormatOptions

ROOT = Path(__file__).resolve().parents[2]


def wkd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wkd", "--log-stderr", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_detach_of_an_absent_mapping_succeeds() -> None:
    # Stopping a unit whose mapping is already gone is not an error (ExecStop runs anyway).
    r = wkd("detach", "wkd-no-such-mapping")
    assert r.returncode == 0, r.stderr


def test_detach_does_not_load_the_heavy_parts() -> None:
    # detach runs at shutdown: no engine, no PKCS#11, no event loop.
    code = ("import sys, wkd.system.daemon as d; d._detach('wkd-no-such-mapping');"
            "print(sorted(m for m in ('asyncio', 'pkcs11', 'dbus_fast', 'wkd.engine')"
            " if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    assert r.stdout.strip() == "[]"


def test_attach_names_a_missing_entry(tmp_path: Path) -> None:
    tab = tmp_path / "wkdtab"
    tab.write_text("other /dev/disk/by-uuid/00000000-0000-0000-0000-000000000000\n"
                   "bad line x y z\n")
    r = wkd("--state-dir", str(tmp_path / "state"), "attach", "data", "--wkdtab", str(tab))
    assert r.returncode == 3, r
    assert "no entry named 'data'" in r.stderr and "Traceback" not in r.stderr


def test_attach_unlocks_the_entry_or_says_why(tmp_path: Path) -> None:
    skip = h.need_tools()
    if skip:
        pytest.skip(skip)
    state = tmp_path / "state"
    img = h.make_image(tmp_path / "vol.img")
    res = subprocess.run(["losetup", "--find", "--show", str(img)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"no free loop device: {res.stderr.strip()}")
    dev = res.stdout.strip()
    try:
        async def fmt() -> None:
            eng = h.new_engine(state, allow_files=False)
            await eng.start()
            try:
                await eng.format(dev, None, FormatOptions())
            finally:
                await eng.stop()

        asyncio.run(fmt())
        tab = tmp_path / "wkdtab"
        tab.write_text(f"data {dev}\n")
        r = wkd("--state-dir", str(state), "attach", "data", "--wkdtab", str(tab))
        if luks2.device_mapper_available():
            assert r.returncode == 0, r.stderr
            wkd("detach", "data")
        else:
            # The engine got as far as activation: HSM opened, key unwrapped and checked.
            assert r.returncode == 4 and "device-mapper" in r.stderr, r
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
