"""Bad input gets a typed org.wkd1.Error.* (or the bus's own type error) and changes nothing."""

from __future__ import annotations

import hashlib
import os

import pytest
from dbus_fast import Variant

from tests.bus.conftest import CallError, busctl, call, format_image, get_all


def _digest(path: str, n: int = 1 << 20) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(n)).hexdigest()


@pytest.fixture
async def vol(bus, image):
    path = await format_image(bus, image)
    return image, path


async def _expect(bus, name, member, sig, body, **kw):
    with pytest.raises(CallError) as e:
        await call(bus, member, sig, body, **kw)
    assert e.value.name == name, e.value
    assert "Traceback" not in e.value.text
    return e.value


async def test_typed_errors_and_header_unchanged(bus, vol):
    image, path = vol
    before = _digest(image)
    props = await get_all(bus, path, "org.wkd1.Volume")
    big = "x" * (1 << 20)  # past the per-call bound: refused before anything reads it
    long = "x" * 5000  # within the bound, past PATH_MAX: refused when decoded
    cases = [
        ("org.wkd1.Error.UnknownOption", "Unlock", "sa{sv}", [image, {"readonly": Variant("b", True)}]),  # noqa: E501
        ("org.wkd1.Error.InvalidArgument", "Unlock", "sa{sv}", [image, {"read-only": Variant("s", "yes")}]),  # noqa: E501
        ("org.wkd1.Error.InvalidName", "Unlock", "sa{sv}", [image, {"name": Variant("s", "../etc")}]),  # noqa: E501
        ("org.wkd1.Error.InvalidName", "Unlock", "sa{sv}", [image, {"name": Variant("s", "a/b")}]),
        ("org.wkd1.Error.InvalidName", "Unlock", "sa{sv}", [image, {"name": Variant("s", "-x")}]),
        ("org.wkd1.Error.InvalidName", "Unlock", "sa{sv}", [image, {"name": Variant("s", "n" * 200)}]),  # noqa: E501
        ("org.wkd1.Error.LimitExceeded", "Unlock", "sa{sv}", [big, {}]),
        ("org.wkd1.Error.InvalidArgument", "Unlock", "sa{sv}", [long, {}]),
        ("org.wkd1.Error.InvalidArgument", "Unlock", "sa{sv}", ["not-a-volume", {}]),
        ("org.wkd1.Error.LimitExceeded", "Format", "ssa{sv}", [big, "", {}]),
        ("org.wkd1.Error.InvalidArgument", "Format", "ssa{sv}", [long, "", {}]),
        ("org.wkd1.Error.InvalidArgument", "Format", "ssa{sv}", [image, long, {}]),
        ("org.wkd1.Error.InvalidName", "Rewrap", "ssa{sv}", [image, "bad label!", {}]),
        ("org.wkd1.Error.LimitExceeded", "CreateKek", "sa{sv}", [big, {}]),
        ("org.wkd1.Error.InvalidArgument", "CreateKek", "sa{sv}", [long, {}]),
        ("org.wkd1.Error.InvalidName", "CreateKek", "sa{sv}", ["-rf", {}]),
        ("org.wkd1.Error.UnknownOption", "CreateKek", "sa{sv}", ["ok-label", {"x": Variant("b", True)}]),  # noqa: E501
        ("org.wkd1.Error.UnknownOption", "Format", "ssa{sv}", [image, "", {"forse": Variant("b", True)}]),  # noqa: E501
        ("org.wkd1.Error.InvalidArgument", "Format", "ssa{sv}", [image, "", {"key-bits": Variant("u", 100)}]),  # noqa: E501
        ("org.wkd1.Error.InvalidArgument", "Format", "ssa{sv}", ["relative/path", "", {}]),
        ("org.wkd1.Error.DeviceNotFound", "Format", "ssa{sv}", ["/dev/does-not-exist", "", {}]),
        ("org.wkd1.Error.DeviceNotFound", "Unlock", "sa{sv}", ["/dev/does-not-exist", {}]),
        ("org.wkd1.Error.VolumeNotFound", "Unlock", "sa{sv}", ["01234567-89ab-cdef-0123-456789abcdef", {}]),  # noqa: E501
        ("org.wkd1.Error.KekNotFound", "Rewrap", "ssa{sv}", [image, "no-such-kek", {}]),
        ("org.wkd1.Error.KekNotFound", "Format", "ssa{sv}", [image, "no-such-kek", {"force": Variant("b", True)}]),  # noqa: E501
    ]
    for name, member, sig, body in cases:
        await _expect(bus, name, member, sig, body)
    # A regular file outside the allow-list, and a character device, are not block devices.
    for dev in ("/etc/passwd", "/dev/null"):
        e = await _expect_any(bus, "Format", "ssa{sv}", [dev, "", {"force": Variant("b", True)}])
        # With allow_image_files (test config) a regular file is judged as an image (too
        # small here); the point is a typed refusal and an untouched file.
        assert e.name in {"org.wkd1.Error.NotABlockDevice", "org.wkd1.Error.InvalidArgument"}, e
    assert _digest(image) == before
    assert await get_all(bus, path, "org.wkd1.Volume") == props


async def _expect_any(bus, member, sig, body):
    with pytest.raises(CallError) as e:
        await call(bus, member, sig, body)
    assert e.value.name.startswith("org.wkd1.Error."), e.value
    return e.value


async def test_etc_passwd_untouched(bus):
    before = _digest("/etc/passwd")
    await _expect_any(bus, "Format", "ssa{sv}", ["/etc/passwd", "", {"force": Variant("b", True)}])
    assert _digest("/etc/passwd") == before


def test_wrong_types_via_busctl(wkd_daemon, image):
    a = wkd_daemon.address
    before = _digest(image)
    # A signature the service does not have: the bus-level UnknownMethod, no traceback.
    for args in (["Format", "sa{sv}", image, "0"],
                 ["Unlock", "su", image, "1"],
                 ["Lock", "s", image],
                 ["CreateKek", "ia{sv}", "1", "0"]):
        r = busctl(a, "call", "org.wkd1", "/org/wkd1", "org.wkd1.Manager", *args, check=False)
        assert r.returncode != 0, args
        assert "Traceback" not in r.stderr and "File \"" not in r.stderr
    # Wrong variant type inside the options.
    r = busctl(a, "call", "org.wkd1", "/org/wkd1", "org.wkd1.Manager", "Unlock", "sa{sv}",
               image, "1", "verify-only", "s", "yes", check=False)
    assert r.returncode != 0 and "verify-only" in r.stderr
    assert _digest(image) == before


async def test_unknown_method_and_internal_details(bus):
    e = await _expect_any_name(bus, "NoSuchMethod", "", [])
    assert "Traceback" not in e.text


async def _expect_any_name(bus, member, sig, body):
    with pytest.raises(CallError) as e:
        await call(bus, member, sig, body)
    return e.value


_ = os
