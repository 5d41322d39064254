"""The PKCS#11 backend against a real SoftHSM2 token (no mocks).

No test prints or asserts on clear key bytes in a message; keys are compared with
SecretKey.equals.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import os
import stat
import time

import pkcs11
import pytest
from pkcs11 import Attribute

from tests.host.softhsm_fixture import *  # noqa: F403
from tests.host.softhsm_fixture import KEK_A, KEK_B
from wkd import errors
from wkd.hsm.base import HsmBackend, ensure_kek
from wkd.hsm.pin import read_pin
from wkd.hsm.pkcs11 import Pkcs11Backend, module_in_use
from wkd.hsm.softhsm import (
    DEFAULT_KEK_LABEL,
    EMBEDDED_TOKEN_LABEL,
    SOFTHSM_MODULE,
    ensure_embedded_token,
)
from wkd.model import Mechanism


def _session_objects(session) -> int:
    return len(list(session.get_objects({Attribute.TOKEN: False})))


# --- KEK management ---------------------------------------------------------------------
async def test_backend_satisfies_protocol(hsm, softhsm_token):
    assert isinstance(hsm, HsmBackend)
    assert softhsm_token.read_pin() not in repr(hsm)


async def test_create_list_and_duplicate_kek(hsm):
    keks = await hsm.list_keks()
    assert [k.label for k in keks] == [KEK_A, KEK_B]
    assert all(k.key_bits == 256 and len(k.key_id) == 32 for k in keks)
    assert keks[0].key_id != keks[1].key_id
    created = await hsm.create_kek("kek-c")
    assert await hsm.get_kek("kek-c") == created
    with pytest.raises(errors.KekExists):
        await hsm.create_kek(KEK_A)
    assert len(await hsm.list_keks()) == 3


@pytest.mark.parametrize("label", ["", "-x", "a b", "x" * 65, "é", "a/b", "a\n"])
async def test_invalid_labels(hsm, label):
    with pytest.raises(errors.InvalidName):
        await hsm.create_kek(label)


async def test_list_keks_ignores_other_keys(hsm):
    # An AES key without WRAP/UNWRAP is not a KEK.
    def make(session):
        session.generate_key(pkcs11.KeyType.AES, 256, label="not-a-kek", store=True,
                             capabilities=pkcs11.MechanismFlag.ENCRYPT)
    await hsm.run_in_session(make)
    assert "not-a-kek" not in [k.label for k in await hsm.list_keks()]


async def test_kek_attributes_read_back(hsm):
    def attrs(session):
        (key,) = list(session.get_objects({Attribute.LABEL: KEK_A}))
        got = {a: key[a] for a in (
            Attribute.TOKEN, Attribute.SENSITIVE, Attribute.EXTRACTABLE,
            Attribute.NEVER_EXTRACTABLE, Attribute.ALWAYS_SENSITIVE, Attribute.WRAP,
            Attribute.UNWRAP, Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.SIGN,
            Attribute.VERIFY, Attribute.MODIFIABLE, Attribute.VALUE_LEN, Attribute.KEY_TYPE)}
        try:
            key[Attribute.VALUE]
            value_readable = True
        except pkcs11.exceptions.AttributeSensitive:
            value_readable = False
        return got, value_readable
    got, value_readable = await hsm.run_in_session(attrs)
    assert not value_readable
    assert got[Attribute.TOKEN] and got[Attribute.SENSITIVE] and got[Attribute.ALWAYS_SENSITIVE]
    assert not got[Attribute.EXTRACTABLE] and got[Attribute.NEVER_EXTRACTABLE]
    assert got[Attribute.WRAP] and got[Attribute.UNWRAP]
    for a in (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.SIGN, Attribute.VERIFY,
              Attribute.MODIFIABLE):
        assert got[a] is False, a
    assert got[Attribute.VALUE_LEN] == 32
    assert got[Attribute.KEY_TYPE] == pkcs11.KeyType.AES


# --- wrap / unwrap / rewrap ---------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64])
async def test_generate_then_unwrap(hsm, size):
    wrapped = await hsm.generate_wrapped_key(KEK_A, size)
    kek = await hsm.get_kek(KEK_A)
    assert wrapped.kek_label == KEK_A and wrapped.kek_id == kek.key_id
    assert wrapped.mechanism is Mechanism.AES_KEY_WRAP_PAD
    assert wrapped.key_bytes == size and len(wrapped.blob) == size + 8  # RFC 5649 adds 8
    with await hsm.unwrap(wrapped) as key:
        assert key.length == size
        assert key.locked
        assert key.reveal_for_test() != bytes(size)
    # No transient session object survives (the VK object and the unwrapped copy).
    assert await hsm.run_in_session(_session_objects) == 0


async def test_two_generated_keys_differ(hsm):
    a = await hsm.unwrap(await hsm.generate_wrapped_key(KEK_A, 64))
    b = await hsm.unwrap(await hsm.generate_wrapped_key(KEK_A, 64))
    assert not a.equals(b)


@pytest.mark.parametrize("size", [0, 16, 48, 65, 128])
async def test_unsupported_key_sizes(hsm, size):
    with pytest.raises(errors.InvalidArgument):
        await hsm.generate_wrapped_key(KEK_A, size)


async def test_rewrap(hsm):
    wrapped = await hsm.generate_wrapped_key(KEK_A, 64)
    rewrapped = await hsm.rewrap(wrapped, KEK_B)
    assert rewrapped.kek_label == KEK_B
    assert rewrapped.kek_id == (await hsm.get_kek(KEK_B)).key_id
    assert rewrapped.blob != wrapped.blob and rewrapped.key_bytes == 64
    with await hsm.unwrap(wrapped) as old, await hsm.unwrap(rewrapped) as new:
        assert old.equals(new)
    assert await hsm.run_in_session(_session_objects) == 0


async def test_unwrap_with_wrong_kek(hsm):
    wrapped = await hsm.generate_wrapped_key(KEK_A, 64)
    kek_b = await hsm.get_kek(KEK_B)
    lie = dataclasses.replace(wrapped, kek_label=KEK_B, kek_id=kek_b.key_id)
    with pytest.raises(errors.UnwrapFailed) as e:
        await hsm.unwrap(lie)
    assert wrapped.blob.hex() not in str(e.value)
    with pytest.raises(errors.UnwrapFailed):
        await hsm.rewrap(lie, KEK_A)
    assert await hsm.run_in_session(_session_objects) == 0


@pytest.mark.parametrize("pos", [0, 7, 8, 39, 71])
async def test_tampered_blob(hsm, pos):
    wrapped = await hsm.generate_wrapped_key(KEK_A, 64)
    blob = bytearray(wrapped.blob)
    blob[pos] ^= 0x01
    with pytest.raises(errors.UnwrapFailed):
        await hsm.unwrap(dataclasses.replace(wrapped, blob=bytes(blob)))


async def test_truncated_blob(hsm):
    wrapped = await hsm.generate_wrapped_key(KEK_A, 64)
    with pytest.raises(errors.UnwrapFailed):
        await hsm.unwrap(dataclasses.replace(wrapped, blob=wrapped.blob[:-8]))


async def test_missing_kek(hsm):
    wrapped = await hsm.generate_wrapped_key(KEK_A, 32)
    with pytest.raises(errors.KekNotFound):
        await hsm.unwrap(dataclasses.replace(wrapped, kek_label="gone"))
    with pytest.raises(errors.KekNotFound):
        await hsm.generate_wrapped_key("gone", 32)
    with pytest.raises(errors.KekNotFound):
        await hsm.rewrap(wrapped, "gone")
    with pytest.raises(errors.KekNotFound):
        await hsm.get_kek("gone")


async def test_label_now_names_another_key(hsm):
    wrapped = await hsm.generate_wrapped_key(KEK_A, 32)
    with pytest.raises(errors.KekNotFound, match="different key"):
        await hsm.unwrap(dataclasses.replace(wrapped, kek_id="00" * 16))


async def test_mismatched_key_length_is_refused(hsm):
    wrapped = await hsm.generate_wrapped_key(KEK_A, 32)
    with pytest.raises(errors.UnwrapFailed, match="wrong length"):
        await hsm.unwrap(dataclasses.replace(wrapped, key_bytes=64))


# --- login, concurrency, session loss -----------------------------------------------------
async def test_wrong_pin_fresh_login(softhsm_token):
    backend = Pkcs11Backend(softhsm_token.module, softhsm_token.token_label, "wrong-pin-1234")
    with pytest.raises(errors.HsmLoginFailed) as e:
        await backend.open()
    assert "wrong-pin-1234" not in str(e.value)
    assert not module_in_use(softhsm_token.module)  # a failed open releases the module
    await backend.close()  # idempotent, even after a failed open


async def test_wrong_pin_while_token_logged_in(hsm, softhsm_token):
    other = Pkcs11Backend(softhsm_token.module, softhsm_token.token_label, "bad")
    with pytest.raises(errors.HsmLoginFailed):
        await other.open()
    # The good backend is untouched.
    assert len(await hsm.list_keks()) == 2


async def test_second_backend_shares_login(hsm, softhsm_token):
    other = Pkcs11Backend(softhsm_token.module, softhsm_token.token_label,
                          softhsm_token.read_pin())
    await other.open()
    wrapped = await other.generate_wrapped_key(KEK_A, 64)
    await other.close()
    # Closing one backend must not log the shared session out underneath the other.
    (await hsm.unwrap(wrapped)).wipe()


async def test_unknown_token_and_module(softhsm_token):
    with pytest.raises(errors.HsmUnavailable, match="no token labelled"):
        await Pkcs11Backend(softhsm_token.module, "no-such-token", "x").open()
    with pytest.raises(errors.HsmUnavailable, match="cannot load"):
        await Pkcs11Backend("/nonexistent/libp11.so", "t", "x").open()


async def test_not_open(softhsm_token):
    backend = Pkcs11Backend(softhsm_token.module, softhsm_token.token_label, "x")
    with pytest.raises(errors.HsmUnavailable, match="not open"):
        await backend.list_keks()


async def test_info(hsm):
    info = await hsm.info()
    assert info.token_label == EMBEDDED_TOKEN_LABEL
    assert info.software and info.embedded
    assert "SoftHSM" in info.manufacturer
    assert info.module == SOFTHSM_MODULE


async def test_concurrent_unwraps_are_serialised(hsm):
    wrapped = await hsm.generate_wrapped_key(KEK_A, 64)
    keys = await asyncio.gather(*(hsm.unwrap(wrapped) for _ in range(50)))
    assert all(k.equals(keys[0]) for k in keys)
    for k in keys:
        k.wipe()
    # Mixed operations at once as well (SoftHSM2 would SIGSEGV on two threads).
    results = await asyncio.gather(
        *(hsm.rewrap(wrapped, KEK_B) for _ in range(10)),
        *(hsm.generate_wrapped_key(KEK_B, 32) for _ in range(10)),
        *(hsm.list_keks() for _ in range(10)),
    )
    assert len(results) == 30


# python-pkcs11 0.10.1: when C_FindObjectsInit fails on a dead session, its SearchIter's
# __del__ later calls C_FindObjectsFinal and reports SessionHandleInvalid as "unraisable".
# Harmless (the handle is dead); the backend itself recovers, which is what is asserted.
_IGNORE_DEAD_SEARCH = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


@_IGNORE_DEAD_SEARCH
async def test_recovers_from_closed_session(hsm):
    wrapped = await hsm.generate_wrapped_key(KEK_A, 64)
    with await hsm.unwrap(wrapped) as before:
        # Close the session (C_Logout + C_CloseSession) underneath the backend.
        await hsm.run_in_session(lambda s: s.close())
        with await hsm.unwrap(wrapped) as after:
            assert before.equals(after)
    assert len(await hsm.list_keks()) == 2


@_IGNORE_DEAD_SEARCH
async def test_recovers_from_close_all_sessions(hsm):
    wrapped = await hsm.generate_wrapped_key(KEK_A, 32)

    def close_all(session):
        # Through the same dlopen handle, on the module thread, as a token reset would.
        lib = ctypes.CDLL(SOFTHSM_MODULE)
        return lib.C_CloseAllSessions(ctypes.c_ulong(session.token.slot.slot_id))

    assert await hsm.run_in_session(close_all) == 0
    (await hsm.unwrap(wrapped)).wipe()
    assert (await hsm.rewrap(wrapped, KEK_B)).kek_label == KEK_B


@_IGNORE_DEAD_SEARCH
async def test_session_loss_with_changed_pin_fails_cleanly(hsm, softhsm_token):
    wrapped = await hsm.generate_wrapped_key(KEK_A, 32)
    # Change the user PIN, then lose the session: the reopen must fail with a typed error.
    old = softhsm_token.read_pin()
    await hsm.run_in_session(lambda s: s.set_pin(old, "another-pin-5678"))
    await hsm.run_in_session(lambda s: s.close())
    with pytest.raises(errors.HsmLoginFailed):
        await hsm.unwrap(wrapped)


# --- embedded token and PIN files ----------------------------------------------------------
async def test_embedded_token_is_idempotent_and_private(softhsm_token, tmp_path):
    state = os.path.dirname(softhsm_token.conf_file)
    pin_before = softhsm_token.read_pin()
    again = ensure_embedded_token(state)
    assert again == softhsm_token and again.read_pin() == pin_before
    assert os.environ["SOFTHSM2_CONF"] == softhsm_token.conf_file
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    for name in ("pin", "so-pin"):
        path = os.path.join(state, name)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert len(read_pin(path, credential=None)) == 32
    assert read_pin(os.path.join(state, "pin"), None) != read_pin(
        os.path.join(state, "so-pin"), None)
    with open(softhsm_token.conf_file) as f:
        conf = f.read()
    assert f"directories.tokendir = {state}/tokens" in conf
    # Exactly one initialized token with our label, usable with the stored PIN.
    backend = Pkcs11Backend(softhsm_token.module, EMBEDDED_TOKEN_LABEL, pin_before,
                            embedded=True)
    await backend.open()
    try:
        kek, created = await ensure_kek(backend, DEFAULT_KEK_LABEL)
        assert kek.label == DEFAULT_KEK_LABEL and created
        assert await ensure_kek(backend, DEFAULT_KEK_LABEL) == (kek, False)
    finally:
        await backend.close()


def test_read_pin_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    pin_file = tmp_path / "pin"
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"s3cret\n")
    os.close(fd)
    assert read_pin(str(pin_file)) == "s3cret"
    # A systemd credential wins over the file.
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "wkd-pin").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_pin(str(pin_file)) == "from-credential"
    assert read_pin(str(pin_file), credential=None) == "s3cret"
    assert read_pin(str(pin_file), credential="other") == "s3cret"


def test_read_pin_refuses_readable_file(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    pin_file = tmp_path / "pin"
    pin_file.write_text("topsecretpin\n")
    os.chmod(pin_file, 0o640)
    with pytest.raises(errors.HsmLoginFailed) as e:
        read_pin(str(pin_file))
    assert str(pin_file) in str(e.value) and "topsecretpin" not in str(e.value)
    os.chmod(pin_file, 0o604)
    with pytest.raises(errors.HsmLoginFailed):
        read_pin(str(pin_file))
    with pytest.raises(errors.HsmLoginFailed, match="cannot read"):
        read_pin(str(tmp_path / "missing"))
    with pytest.raises(errors.HsmLoginFailed, match="no PIN"):
        read_pin(None)


def test_read_pin_refuses_foreign_owner(tmp_path, monkeypatch):
    if os.getuid() != 0:
        pytest.skip("needs root to chown a file to another uid")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    pin_file = tmp_path / "pin"
    pin_file.write_text("x\n")
    os.chmod(pin_file, 0o600)
    os.chown(pin_file, 65534, 65534)
    with pytest.raises(errors.HsmLoginFailed, match="owned by uid 65534"):
        read_pin(str(pin_file))


# --- throughput ------------------------------------------------------------------------------
async def test_unwrap_throughput(hsm, record_property):
    wrapped = await hsm.generate_wrapped_key(KEK_A, 64)
    n = 500
    start = time.perf_counter()
    for _ in range(n):
        (await hsm.unwrap(wrapped)).wipe()
    rate = n / (time.perf_counter() - start)
    record_property("unwraps_per_second", round(rate))
    print(f"\nsingle-task unwraps through the async API: {rate:.0f}/s")
    # Generous floor: this shares 2 cores with other test runs; it catches a per-call
    # re-login or module reload (tens per second), not ordinary noise.
    assert rate > 100



def test_embedded_token_initializer_runs_once(tmp_path) -> None:
    """The child-process initializer runs on first use only; a wiped token directory is
    noticed and initialized again."""
    import shutil

    from wkd.hsm import softhsm

    calls: list[str] = []
    real = softhsm._init_token

    def counting(*args: str) -> None:
        calls.append(args[2])
        real(*args)

    softhsm._init_token = counting  # type: ignore[assignment]
    try:
        first = softhsm.ensure_embedded_token(str(tmp_path))
        again = softhsm.ensure_embedded_token(str(tmp_path))
        assert first == again and len(calls) == 1
        shutil.rmtree(tmp_path / "tokens")
        softhsm.ensure_embedded_token(str(tmp_path))
        assert len(calls) == 2
    finally:
        softhsm._init_token = real  # type: ignore[assignment]
