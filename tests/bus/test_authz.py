"""Authorization: unprivileged callers (uid nobody) against a real fake-polkit peer."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from dbus_fast import Variant

from tests.bus.conftest import call, format_image

NOBODY = "nobody"


async def _as_nobody(address: str, *args: str, interactive: bool = False) -> subprocess.CompletedProcess[str]:  # noqa: E501
    """busctl call run as uid nobody; runs while this loop keeps serving the fake polkit."""
    cmd = ["setpriv", f"--reuid={NOBODY}", "--regid=nogroup", "--clear-groups",
           "busctl", f"--address={address}", "--json=short"]
    # busctl sets the header flag by default; say it explicitly either way.
    cmd.append(f"--allow-interactive-authorization={'yes' if interactive else 'no'}")
    cmd += ["call", "org.wkd1", *args]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE,
                                                stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return subprocess.CompletedProcess(cmd, proc.returncode or 0, out.decode(), err.decode())


async def _gdbus_nobody(address: str, path: str, method: str, *args: str) -> str:
    """gdbus call as nobody; gdbus prints the D-Bus error name, busctl only the message."""
    cmd = ["setpriv", f"--reuid={NOBODY}", "--regid=nogroup", "--clear-groups",
           "gdbus", "call", "--address", address, "--dest", "org.wkd1", "--object-path", path,
           "--method", method, *args]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE,
                                                stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return out.decode() + err.decode()


def _mutating_calls(image: str, vol_path: str, fmt: str | None = None) -> list[tuple[str, str, list[str], str]]:  # noqa: E501
    """(object path, Interface.Method, gdbus args, polkit action) for every mutating method."""
    return [
        ("/org/wkd1", "org.wkd1.Manager.CreateKek", ["nobody-kek", "@a{sv} {}"],
         "org.wkd1.manage-kek"),
        ("/org/wkd1", "org.wkd1.Manager.Format", [fmt or image, "", "@a{sv} {'force': <true>}"],
         "org.wkd1.format"),
        ("/org/wkd1", "org.wkd1.Manager.Unlock", [vol_path, "@a{sv} {'verify-only': <true>}"],
         "org.wkd1.unlock"),
        ("/org/wkd1", "org.wkd1.Manager.Lock", [vol_path, "@a{sv} {}"], "org.wkd1.lock"),
        ("/org/wkd1", "org.wkd1.Manager.Rewrap", [vol_path, "wkd-default", "@a{sv} {}"],
         "org.wkd1.rewrap"),
        ("/org/wkd1", "org.wkd1.Manager.RewrapAll", ["wkd-default", "wkd-default", "@a{sv} {}"],
         "org.wkd1.rewrap"),
        (vol_path, "org.wkd1.Volume.Unlock", ["@a{sv} {'verify-only': <true>}"],
         "org.wkd1.unlock"),
        (vol_path, "org.wkd1.Volume.Lock", ["@a{sv} {}"], "org.wkd1.lock"),
        (vol_path, "org.wkd1.Volume.Rewrap", ["wkd-default", "@a{sv} {}"], "org.wkd1.rewrap"),
    ]


@pytest.fixture
async def volume(bus, image):
    return image, await format_image(bus, image)


async def test_nobody_refused_when_polkit_denies(wkd_daemon, polkit, volume, bus):
    image, path = volume
    polkit.set_default("deny")
    for obj, method, args, action in _mutating_calls(image, path):
        n = len(polkit.calls)
        out = await _gdbus_nobody(wkd_daemon.address, obj, method, *args)
        assert "org.wkd1.Error.NotAuthorized" in out, (method, out)
        assert "Traceback" not in out
        # polkit was asked, about this action, for the caller's own connection.
        assert len(polkit.calls) == n + 1, method
        check = polkit.calls[-1]
        assert check.action == action
        assert check.subject_kind == "system-bus-name"
        assert check.subject["name"].startswith(":")
        assert check.subject_uid == 65534  # the subject is the nobody client, not the daemon
        assert check.flags == 0
    # Nothing changed: the volume is still under the default KEK and still there.
    (keks,) = await call(bus, "ListKeks", "a{sv}", [{}])
    assert "nobody-kek" not in {k[0] for k in keks}


async def test_nobody_allowed_when_polkit_allows(wkd_daemon, polkit, volume, tmp_path):
    image, path = volume
    other = tmp_path / "other.img"
    with open(other, "wb") as f:
        f.truncate(32 << 20)
    polkit.set_default("allow")
    for obj, method, args, _action in _mutating_calls(image, path, str(other)):
        out = await _gdbus_nobody(wkd_daemon.address, obj, method, *args)
        if "Lock" in method:
            # Allowed: any error now comes from the engine, never NotAuthorized.
            assert "NotAuthorized" not in out, (method, out)
        else:
            assert "Error" not in out, (method, out)


async def test_nobody_refused_without_polkit(wkd_daemon, volume):
    image, path = volume
    for obj, method, args, _action in _mutating_calls(image, path):
        out = await _gdbus_nobody(wkd_daemon.address, obj, method, *args)
        assert "org.wkd1.Error.NotAuthorized" in out, (method, out)
        assert "polkit could not be reached" in out


async def test_reads_need_no_authorization(wkd_daemon, volume):
    _image, path = volume
    for obj, method, args in [("/org/wkd1", "org.wkd1.Manager.ListVolumes", ["@a{sv} {}"]),
                              ("/org/wkd1", "org.wkd1.Manager.ListKeks", ["@a{sv} {}"]),
                              (path, "org.freedesktop.DBus.Properties.GetAll",
                               ["org.wkd1.Volume"])]:
        out = await _gdbus_nobody(wkd_daemon.address, obj, method, *args)
        assert "Error" not in out, out


async def test_root_always_allowed(bus, polkit, image):
    polkit.set_default("deny")
    path = await format_image(bus, image)
    await call(bus, "Unlock", "sa{sv}", [path, {"verify-only": Variant("b", True)}])
    assert polkit.calls == []  # root never needs polkit


async def test_interactive_flag_reaches_polkit(wkd_daemon, polkit, volume):
    _image, path = volume
    polkit.set_default("challenge")
    r = await _as_nobody(wkd_daemon.address, "/org/wkd1", "org.wkd1.Manager", "Unlock",
                         "sa{sv}", path, "1", "verify-only", "b", "true", interactive=True)
    assert r.returncode != 0
    assert polkit.calls[-1].flags == 1
    r = await _as_nobody(wkd_daemon.address, "/org/wkd1", "org.wkd1.Manager", "Unlock",
                         "sa{sv}", path, "2", "verify-only", "b", "true", "interactive", "b",
                         "true")
    assert polkit.calls[-1].flags == 1
    r = await _as_nobody(wkd_daemon.address, "/org/wkd1", "org.wkd1.Manager", "Unlock",
                         "sa{sv}", path, "1", "verify-only", "b", "true")
    assert polkit.calls[-1].flags == 0
    assert "needs authentication" in r.stderr


async def test_only_root_may_own_the_name(wkd_daemon):
    out = await _gdbus_nobody(wkd_daemon.address, "/org/freedesktop/DBus",
                              "org.freedesktop.DBus.RequestName", "org.wkd1", "4")
    assert "AccessDenied" in out, out
