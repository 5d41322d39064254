"""Decoding of bus arguments and a{sv} options into typed values (pure)."""

from __future__ import annotations

import os

import pytest
from dbus_fast import Variant

from wkd.bus import options as opt
from wkd.errors import InvalidArgument, InvalidName, UnknownOption
from wkd.model import FormatOptions, LockOptions, UnlockOptions
from wkd.secret import SecretKey
from wkd.values import DevicePath, KekLabel, KeySize, MappingName, VolumeUuid

UUID = "01234567-89ab-cdef-0123-456789abcdef"


def test_defaults():
    assert opt.format_options({}) == FormatOptions()
    assert opt.unlock_options({}) == UnlockOptions()
    assert opt.lock_options({}) == LockOptions()
    opt.no_options({}, "X")


def test_values_are_typed():
    o = opt.unlock_options({"name": Variant("s", "data"), "read-only": Variant("b", True),
                            "verify-only": Variant("b", True),
                            "interactive": Variant("b", True)})
    assert o == UnlockOptions(name=MappingName("data"), read_only=True, verify_only=True)
    assert type(o.name) is MappingName
    f = opt.format_options({"force": Variant("b", True), "key-bits": Variant("u", 256),
                            "label": Variant("s", "x")})
    assert f == FormatOptions(force=True, key_size=KeySize.AES_128_XTS, label="x")
    assert opt.lock_options({"deferred": Variant("b", True)}).deferred is True
    assert opt.lock_options({"force": Variant("b", True)}).force is True


def test_positional_arguments_are_typed():
    assert opt.device_path("/dev/sdb") == "/dev/sdb"
    assert type(opt.device_path("/dev/sdb")) is DevicePath
    assert type(opt.kek_label("k-1")) is KekLabel
    assert opt.optional_kek_label("") is None
    for text in (UUID, UUID.upper(), "UUID=" + UUID, "/org/wkd1/volume/" + UUID.replace("-", "_")):
        ref = opt.volume_ref(text)
        assert ref == UUID and type(ref) is VolumeUuid, text
    assert type(opt.volume_ref("/dev/sdb")) is DevicePath


@pytest.mark.parametrize("fn,arg,exc", [
    (opt.volume_ref, "not-a-volume", InvalidArgument),
    (opt.volume_ref, 5, InvalidArgument),
    (opt.volume_ref, "/dev/x\0y", InvalidArgument),
    (opt.volume_ref, "/" + "x" * 5000, InvalidArgument),
    (opt.device_path, "relative", InvalidArgument),
    (opt.kek_label, "-rf", InvalidName),
    (opt.kek_label, "bad label!", InvalidName),
])
def test_arguments_refused(fn, arg, exc):
    with pytest.raises(exc):
        fn(arg)


@pytest.mark.parametrize("fn,opts,exc", [
    (opt.unlock_options, {"readonly": Variant("b", True)}, UnknownOption),
    (opt.unlock_options, {"read-only": Variant("s", "true")}, InvalidArgument),
    (opt.unlock_options, {"name": Variant("s", "a/b")}, InvalidName),
    (opt.unlock_options, {"name": Variant("s", "control")}, InvalidName),
    (opt.unlock_options, {"name": Variant("u", 1)}, InvalidArgument),
    (opt.unlock_options, {"interactive": Variant("s", "yes")}, InvalidArgument),
    (opt.format_options, {"key-bits": Variant("u", 128)}, InvalidArgument),
    (opt.format_options, {"label": Variant("s", "x" * 100)}, InvalidArgument),
    (opt.format_options, {"recovery-passphrase": Variant("s", "pw")}, InvalidArgument),
    (opt.lock_options, {"forced": Variant("b", True)}, UnknownOption),
])
def test_refused(fn, opts, exc):
    with pytest.raises(exc):
        fn(opts)


def test_unknown_option_message_is_bounded():
    with pytest.raises(UnknownOption) as e:
        opt.no_options({"k" * 100000: Variant("b", True)}, "X")
    assert len(str(e.value)) < 300


def test_passphrase_in_message_is_refused_by_default():
    """The `ay` route puts the passphrase in the message (bus captures, dbus-daemon's memory):
    refused unless [daemon] allow_passphrase_in_message = true, and the refusal says how to
    pass a descriptor instead."""
    raw = bytes(bytearray(b"a passphrase"))
    with pytest.raises(InvalidArgument) as e:
        opt.format_options({"recovery-passphrase": Variant("ay", raw)})
    assert "recovery-passphrase-fd" in e.value.message
    assert "allow_passphrase_in_message" in e.value.message
    assert "--recovery-passphrase-file" in e.value.message
    assert raw == b"a passphrase"  # refused before it was copied or scrubbed


def test_passphrase_in_message_when_enabled():
    raw = bytes(bytearray(b"pw"))
    f = opt.format_options({"recovery-passphrase": Variant("ay", raw)},
                           allow_passphrase_in_message=True)
    assert f.recovery_passphrase is not None
    assert f.recovery_passphrase.reveal_for_test() == b"pw"
    assert raw == b"\0\0"  # the message's copy is scrubbed
    assert "pw" not in repr(f)


def test_passphrase_descriptor_is_read_only_after_other_options_pass():
    reads: list[object] = []

    def read(fd: object, limit: int) -> SecretKey:
        reads.append(fd)
        return SecretKey.from_bytes(bytearray(b"pw"))

    with pytest.raises(UnknownOption):
        opt.format_options({"recovery-passphrase-fd": Variant("h", 7),
                            "forse": Variant("b", True)}, read)
    with pytest.raises(InvalidArgument):
        opt.format_options({"recovery-passphrase-fd": Variant("h", 7),
                            "label": Variant("s", "\x07")}, read)
    assert reads == []
    f = opt.format_options({"recovery-passphrase-fd": Variant("h", 7)}, read)
    assert reads == [7] and f.recovery_passphrase is not None


def test_read_secret_fd_reads_into_locked_memory():
    from wkd.bus.call import read_secret_fd

    r, w = os.pipe()
    os.write(w, b"horse battery")
    try:
        key = read_secret_fd(r, 512)  # the writer is still open: read what is there
        assert key.reveal_for_test() == b"horse battery"
        os.write(w, b"x" * 600)
        with pytest.raises(InvalidArgument, match="longer than 512"):
            read_secret_fd(r, 512)
    finally:
        os.close(w)
        os.close(r)
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(InvalidArgument, match="no data"):
        read_secret_fd(r, 512)
    os.close(r)
    with pytest.raises(InvalidArgument):
        read_secret_fd(None, 512)
