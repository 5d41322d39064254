"""a{sv} option decoding (pure)."""

from __future__ import annotations

import pytest
from dbus_fast import Variant

from wkd import busopts
from wkd.errors import InvalidArgument, InvalidName, UnknownOption
from wkd.model import FormatOptions, LockOptions, UnlockOptions
from wkd.values import KeySize


def test_defaults():
    assert busopts.format_options({}) == FormatOptions()
    assert busopts.unlock_options({}) == UnlockOptions()
    assert busopts.lock_options({}) == LockOptions()
    assert busopts.common({}).interactive is False


def test_values():
    o = busopts.unlock_options({"name": Variant("s", "data"), "read-only": Variant("b", True),
                                "verify-only": Variant("b", True),
                                "interactive": Variant("b", True)})
    assert o == UnlockOptions(name="data", read_only=True, verify_only=True)
    f = busopts.format_options({"force": Variant("b", True), "key-bits": Variant("u", 256),
                                "label": Variant("s", "x"),
                                "recovery-passphrase": Variant("ay", bytes(bytearray(b"pw")))})
    passphrase = f.recovery_passphrase
    assert passphrase is not None and passphrase.reveal_for_test() == b"pw"
    assert f == FormatOptions(force=True, key_size=KeySize.AES_128_XTS, label="x",
                              recovery_passphrase=passphrase)
    assert "pw" not in repr(f)
    assert busopts.lock_options({"deferred": Variant("b", True)}).deferred is True
    assert busopts.no_options({"interactive": Variant("b", True)}, "X").interactive is True


@pytest.mark.parametrize("fn,opts,exc", [
    (busopts.unlock_options, {"readonly": Variant("b", True)}, UnknownOption),
    (busopts.unlock_options, {"read-only": Variant("s", "true")}, InvalidArgument),
    (busopts.unlock_options, {"name": Variant("s", "a/b")}, InvalidName),
    (busopts.unlock_options, {"name": Variant("u", 1)}, InvalidArgument),
    (busopts.format_options, {"key-bits": Variant("u", 128)}, InvalidArgument),
    (busopts.format_options, {"label": Variant("s", "x" * 100)}, InvalidArgument),
    (busopts.format_options, {"recovery-passphrase": Variant("s", "pw")}, InvalidArgument),
    (busopts.lock_options, {"force": Variant("b", True)}, UnknownOption),
])
def test_refused(fn, opts, exc):
    with pytest.raises(exc):
        fn(opts)


def test_unknown_option_message_is_bounded():
    with pytest.raises(UnknownOption) as e:
        busopts.no_options({"k" * 100000: Variant("b", True)}, "X")
    assert len(str(e.value)) < 300
