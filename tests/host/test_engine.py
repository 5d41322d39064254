"""The engine on a real SoftHSM2 token and real libcryptsetup, with image files and loop devices.

The host kernel has no device-mapper, so activation itself is covered by the VM tier; here it
is asserted to fail with its typed error (and a test skips, saying so, where it would need dm).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.host import engine_helpers as h
from wkd import errors
from wkd.disk import luks2
from wkd.engine import Engine
from wkd.model import FormatOptions, LockOptions, TokenState, UnlockOptions, VolumeCondition
from wkd.secret import SecretKey
from wkd.token import parse_token, render_token
from wkd.values import DevicePath, KekLabel, LuksLabel, MappingName, VolumeUuid

_skip = h.need_tools()
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")

VERIFY = UnlockOptions(verify_only=True)
KEK_A, KEK_B = KekLabel("kek-a"), KekLabel("kek-b")


def P(path: object) -> DevicePath:
    return DevicePath(str(path))


def U(info: object) -> VolumeUuid:
    return VolumeUuid(info.uuid)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wkd-state")


@pytest.fixture
def leaks() -> Iterator[h.LeakWatch]:
    yield from h.watch_logs()


@pytest.fixture
async def engine(state_dir: Path, leaks: h.LeakWatch) -> AsyncIterator[Engine]:
    eng = h.new_engine(state_dir)
    await eng.start()
    for label in ("kek-a", "kek-b"):
        with contextlib.suppress(errors.KekExists):
            await eng.create_kek(KekLabel(label))
    try:
        yield eng
    finally:
        await eng.stop()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return h.make_image(tmp_path / "vol.img")


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[str]:
    img = h.make_image(tmp_path / "loop.img")
    try:
        dev = subprocess.run(["losetup", "--find", "--show", str(img)], check=True,
                             capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"no loop device available: {e}")
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


async def test_embedded_default_is_software_and_has_default_kek(engine: Engine) -> None:
    info = await engine.hsm_info()
    assert info.software and info.embedded
    labels = {k.label for k in await engine.list_keks()}
    assert {"wkd-default", "kek-a", "kek-b"} <= labels


async def test_format_verify_rewrap_round_trip(engine: Engine, image: Path,
                                               leaks: h.LeakWatch) -> None:
    info = await engine.format(P(image), KEK_A, FormatOptions(label=LuksLabel("data")))
    assert info.kek_label == "kek-a" and info.key_bits == 512 and info.label == "data"
    assert info.cipher == "aes-xts-plain64" and info.mapping is None
    key_before = await h.clear_key(engine, image)
    leaks.secrets.append(key_before)
    blob_before = h.only_wrapped(image).blob
    leaks.secrets.append(blob_before)

    assert (await engine.unlock(P(image), VERIFY)).uuid == U(info)
    after = await engine.rewrap(U(info), KEK_B)
    assert after.kek_label == "kek-b"
    wrapped_after = h.only_wrapped(image)
    leaks.secrets.append(wrapped_after.blob)
    assert wrapped_after.blob != blob_before
    assert wrapped_after.kek_label == "kek-b"
    # The volume key itself did not change, and the digest still accepts it.
    assert await h.clear_key(engine, image) == key_before
    await engine.unlock(U(info), VERIFY)
    # Exactly one token remains, active, one generation on.
    toks = h.wkd_tokens(image)
    assert len(toks) == 1
    (tok,) = toks.values()
    assert tok["state"] == "active" and tok["generation"] == 2
    # Rewrap back and again: still the same key.
    await engine.rewrap(P(image), KEK_A)
    assert await h.clear_key(engine, image) == key_before


async def test_rewrap_to_same_kek_is_a_no_op(engine: Engine, image: Path) -> None:
    await engine.format(P(image), KEK_A, FormatOptions())
    before = h.header_bytes(image)
    await engine.rewrap(P(image), KEK_A)
    assert h.header_bytes(image) == before


async def test_luks_dump_shows_token_and_no_clear_key(engine: Engine, image: Path,
                                                      leaks: h.LeakWatch) -> None:
    await engine.format(P(image), KEK_A, FormatOptions())
    dump = h.luks_dump(image)
    assert re.search(r"^Version:\s+2$", dump, re.MULTILINE), dump[:300]
    assert "wkd" in dump
    assert "Keyslots:" in dump
    key = await h.clear_key(engine, image)
    leaks.secrets.append(key)
    for form in h.forms(key):
        assert form.decode(errors="replace") not in dump
    # The clear key is nowhere on the disk, in any form: only its wrapping is.
    disk = image.read_bytes()
    for form in h.forms(key):
        assert form not in disk
    assert base64.b64encode(h.only_wrapped(image).blob) in disk


async def test_recovery_keyslot_uses_a_strong_kdf(engine: Engine, image: Path,
                                                  tmp_path: Path) -> None:
    """The recovery keyslot guards the key with a human passphrase: it gets cryptsetup's
    default work factor (argon2id, benchmarked), not the digest's minimal PBKDF2."""
    await engine.format(P(image), "kek-a",
                        FormatOptions(recovery_passphrase=SecretKey.from_bytes(
                            bytearray(b"correct horse battery"))))
    dump = h.luks_dump(image)
    keyslots = dump.split("Keyslots:")[1].split("Tokens:")[0]
    assert "PBKDF:      argon2id" in keyslots, keyslots
    secret = tmp_path / "pass"
    secret.write_bytes(b"correct horse battery")
    res = subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file", str(secret),
                          P(image)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


async def test_format_with_default_kek(engine: Engine, image: Path) -> None:
    info = await engine.format(P(image), None, FormatOptions())
    assert info.kek_label == "wkd-default"


async def test_wrong_kek_gives_unwrap_failed_and_header_unchanged(
        engine: Engine, image: Path) -> None:
    await engine.format(P(image), KEK_A, FormatOptions())
    # Claim the blob is wrapped by kek-b: the HSM must refuse it.
    with luks2.Luks2Device.open(P(image)) as dev:
        (tid,) = [t for t, ty in dev.token_list().items() if ty == "wkd"]
        tok = parse_token(dev.token_json_get(tid))
    kek_b = next(k for k in await engine.list_keks() if k.label == "kek-b")
    forged = dataclasses.replace(tok, kek_label="kek-b", kek_id=kek_b.key_id)
    with luks2.Luks2Device.open(P(image)) as dev:
        dev.token_json_set(tid, render_token(forged))
    before = h.header_bytes(image)
    with pytest.raises(errors.UnwrapFailed):
        await engine.unlock(P(image), VERIFY)
    with pytest.raises(errors.UnwrapFailed):
        await engine.rewrap(P(image), KEK_A)
    assert h.header_bytes(image) == before


async def test_tampered_blob_gives_unwrap_failed(engine: Engine, image: Path) -> None:
    await engine.format(P(image), KEK_A, FormatOptions())
    with luks2.Luks2Device.open(P(image)) as dev:
        (tid,) = [t for t, ty in dev.token_list().items() if ty == "wkd"]
        raw = json.loads(dev.token_json_get(tid))
        blob = bytearray(base64.b64decode(raw["wrapped_key"]))
        blob[10] ^= 0x01
        raw["wrapped_key"] = base64.b64encode(bytes(blob)).decode()
        dev.token_json_set(tid, json.dumps(raw))
    before = h.header_bytes(image)
    with pytest.raises(errors.UnwrapFailed):
        await engine.unlock(P(image), VERIFY)
    with pytest.raises(errors.UnwrapFailed):
        await engine.rewrap(P(image), KEK_B)
    assert h.header_bytes(image) == before


async def test_rewrap_to_the_current_kek_proves_the_volume_opens(
        engine: Engine, image: Path) -> None:
    """Issue 9.4: with one bit of the wrapped key flipped, Unlock fails with UnwrapFailed;
    Rewrap to the same KEK must not answer success (it did, checking nothing)."""
    await engine.format(P(image), KEK_A, FormatOptions())
    with luks2.Luks2Device.open(str(image)) as dev:
        (tid,) = [t for t, ty in dev.token_list().items() if ty == "wkd"]
        raw = json.loads(dev.token_json_get(tid))
        blob = bytearray(base64.b64decode(raw["wrapped_key"]))
        blob[20] ^= 0x01
        raw["wrapped_key"] = base64.b64encode(bytes(blob)).decode()
        dev.token_json_set(tid, json.dumps(raw))
    before = h.header_bytes(image)
    with pytest.raises(errors.UnwrapFailed):
        await engine.unlock(P(image), VERIFY)
    with pytest.raises(errors.UnwrapFailed):
        await engine.rewrap(P(image), KEK_A)
    assert h.header_bytes(image) == before


async def test_missing_kek(engine: Engine, image: Path) -> None:
    before = h.header_bytes(image)
    with pytest.raises(errors.KekNotFound):
        await engine.format(P(image), KekLabel("no-such-kek"), FormatOptions())
    assert h.header_bytes(image) == before, "a refused Format must not touch the disk"
    await engine.format(P(image), KEK_A, FormatOptions())
    before = h.header_bytes(image)
    with pytest.raises(errors.KekNotFound):
        await engine.rewrap(P(image), KekLabel("no-such-kek"))
    assert h.header_bytes(image) == before


async def test_malformed_token_is_damaged_in_every_view_and_refused(
        engine: Engine, image: Path) -> None:
    info = await engine.format(P(image), KEK_A, FormatOptions())
    with luks2.Luks2Device.open(str(image)) as dev:
        (tid,) = [t for t, ty in dev.token_list().items() if ty == "wkd"]
        raw = json.loads(dev.token_json_get(tid))
        raw["key_bytes"] = "sixty-four"
        dev.token_json_set(tid, json.dumps(raw))
    before = h.header_bytes(image)
    for call in (engine.unlock(P(image), VERIFY), engine.rewrap(P(image), KEK_B),
                 engine.unlock(U(info), VERIFY), engine.lock(U(info), LockOptions())):
        with pytest.raises(errors.VolumeDamaged, match="key_bytes"):
            await call
    # One view (issue 9.5): listed and looked up alike, DAMAGED with the reason.
    (listed,) = [v for v in await engine.list_volumes() if v.uuid == info.uuid]
    for view in (listed, await engine.get_volume(U(info)), await engine.get_volume(P(image))):
        assert view.condition is VolumeCondition.DAMAGED
        assert "key_bytes" in view.condition_detail
    assert h.header_bytes(image) == before


@pytest.mark.parametrize("path,error", [
    ("/nonexistent/disk", errors.DeviceNotFound),
    ("/dev/null", errors.NotABlockDevice),
    ("/etc", errors.NotABlockDevice),
    ("relative/path", errors.InvalidArgument),
])
async def test_wrong_device_kinds(engine: Engine, path: str,
                                  error: type[errors.WkdError]) -> None:
    with pytest.raises(error):
        await engine.format(DevicePath(path), KEK_A, FormatOptions())
    with pytest.raises(error):
        await engine.unlock(DevicePath(path), VERIFY)


async def test_image_files_refused_unless_configured(state_dir: Path, image: Path) -> None:
    eng = h.new_engine(state_dir, allow_files=False)
    await eng.start()
    try:
        before = h.header_bytes(image)
        with pytest.raises(errors.NotABlockDevice):
            await eng.format(P(image), KekLabel("wkd-default"), FormatOptions())
        assert h.header_bytes(image) == before
    finally:
        await eng.stop()


async def test_too_small_device_refused(engine: Engine, tmp_path: Path) -> None:
    small = h.make_image(tmp_path / "small.img", 8 * 1024 * 1024)
    with pytest.raises(errors.InvalidArgument, match="too small"):
        await engine.format(P(small), KEK_A, FormatOptions())
    assert small.read_bytes() == b"\0" * (8 * 1024 * 1024)


@pytest.mark.parametrize("mkfs", [["mkfs.ext4", "-q", "-F"], ["cryptsetup", "luksFormat",
                                  "--type", "luks2", "-q", "--pbkdf", "pbkdf2",
                                  "--pbkdf-force-iterations", "1000", "--key-file", "-"]])
async def test_signature_refused_unless_force(engine: Engine, image: Path,
                                              mkfs: list[str]) -> None:
    subprocess.run([*mkfs, P(image)], check=True, input=b"passphrase", capture_output=True)
    before = h.header_bytes(image)
    with pytest.raises(errors.DeviceHasSignature):
        await engine.format(P(image), KEK_A, FormatOptions())
    assert h.header_bytes(image) == before
    info = await engine.format(P(image), KEK_A, FormatOptions(force=True))
    await engine.unlock(U(info), VERIFY)


async def test_loop_device_format_and_verify(state_dir: Path, loopdev: str) -> None:
    eng = h.new_engine(state_dir, allow_files=False, devices=[loopdev])
    await eng.start()
    try:
        info = await eng.format(P(loopdev), KekLabel("wkd-default"),
                                FormatOptions(auto_unlock=True))
        assert info.device == loopdev and info.auto_unlock
        assert (await eng.unlock(U(info), VERIFY)).uuid == U(info)
        # Discovery: a fresh scan finds the volume on the loop device by its token.
        assert U(info) in await eng.scan()
        await eng.rewrap(P(loopdev), KEK_A)
        assert (await eng.get_volume(U(info))).kek_label == "kek-a"
    finally:
        await eng.stop()


async def test_mounted_device_refused_even_with_force(engine: Engine, loopdev: str,
                                                      tmp_path: Path) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", loopdev], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", loopdev, str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {res.stderr.strip()}")
    try:
        before = h.header_bytes(loopdev)
        with pytest.raises(errors.DeviceInUse):
            await engine.format(P(loopdev), KEK_A, FormatOptions(force=True))
        assert h.header_bytes(loopdev) == before
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


async def test_activation_needs_device_mapper(engine: Engine, image: Path) -> None:
    info = await engine.format(P(image), KEK_A, FormatOptions())
    if luks2.device_mapper_available():
        pytest.skip("this kernel has device-mapper; activation is tested for real elsewhere")
    before = h.header_bytes(image)
    with pytest.raises(errors.DeviceMapperUnavailable):
        await engine.unlock(U(info), UnlockOptions())
    with pytest.raises(errors.NotUnlocked):
        await engine.lock(U(info), LockOptions())
    assert h.header_bytes(image) == before


async def test_real_activation(engine: Engine, loopdev: str) -> None:
    if not luks2.device_mapper_available():
        pytest.skip("no device-mapper in this kernel; "
                    "real activation runs in the VM tier (tests/system)")
    info = await engine.format(P(loopdev), KEK_A, FormatOptions())
    opened = await engine.unlock(U(info), UnlockOptions(name=MappingName("wkd-test-act")))
    assert opened.mapping is not None
    again = await engine.unlock(U(info), UnlockOptions(name=MappingName("wkd-test-act")))
    assert again.mapping == opened.mapping
    await engine.lock(U(info), LockOptions())


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "-rf", ".", "x" * 200, "sp ace"])
async def test_invalid_mapping_names(engine: Engine, image: Path, name: str) -> None:
    info = await engine.format(P(image), KEK_A, FormatOptions())
    with pytest.raises(errors.InvalidName):
        await engine.unlock(U(info), UnlockOptions(name=MappingName(name)))


async def test_unknown_volume(engine: Engine) -> None:
    with pytest.raises(errors.VolumeNotFound):
        await engine.get_volume(VolumeUuid("01234567-89ab-cdef-0123-456789abcdef"))


async def test_concurrent_rewraps_of_one_volume_serialise(engine: Engine, image: Path) -> None:
    info = await engine.format(P(image), KEK_A, FormatOptions())
    key = await h.clear_key(engine, image)
    targets = ["kek-b", "kek-a"] * 5
    await asyncio.gather(*(engine.rewrap(U(info), KekLabel(t)) for t in targets))
    toks = h.wkd_tokens(image)
    assert len(toks) == 1 and next(iter(toks.values()))["state"] == "active"
    assert await h.clear_key(engine, image) == key


class _Stop(Exception):
    pass


@pytest.mark.parametrize("step", ["before-stage", "staged", "verified", "activated"])
async def test_interrupted_rewrap_is_reconciled(state_dir: Path, image: Path, step: str) -> None:
    """An exception at each step boundary (the in-process twin of the kill test)."""

    def stop_at(name: str) -> None:
        if name == step:
            raise _Stop(name)

    eng = h.new_engine(state_dir)
    eng.checkpoint = stop_at
    await eng.start()
    try:
        info = await eng.format(P(image), KEK_A, FormatOptions())
        key = await h.clear_key(eng, image)
        with pytest.raises(_Stop):
            await eng.rewrap(U(info), KEK_B)
        # Whatever the state, the volume opens (unwrap + digest check).
        await eng.unlock(U(info), VERIFY)
    finally:
        await eng.stop()
    eng2 = h.new_engine(state_dir)
    await eng2.start()  # reconciles
    try:
        toks = h.wkd_tokens(image)
        assert len(toks) == 1, f"after {step}: {len(toks)} tokens left"
        (tok,) = toks.values()
        assert tok["state"] == TokenState.ACTIVE.value
        expect = "kek-b" if step == "activated" else "kek-a"
        assert tok["kek_label"] == expect
        await eng2.unlock(U(info), VERIFY)
        assert await h.clear_key(eng2, image) == key, "reconciliation changed the volume key"
    finally:
        await eng2.stop()


async def test_format_failure_restores_device(state_dir: Path, image: Path) -> None:
    """A Format that fails after it began writing puts the old bytes back, through the
    descriptor it holds, and leaves no Format record behind."""
    pattern = os.urandom(4096) * (16 * 256 + 1)
    with open(image, "r+b") as f:
        f.write(pattern)
    before = h.header_bytes(image)

    def boom(step: str) -> None:
        if step == "secondary-written":  # the device is a volume already
            raise errors.LuksError("injected failure after writing")

    eng = h.new_engine(state_dir)
    await eng.start()
    eng.checkpoint = boom
    try:
        with pytest.raises(errors.LuksError, match="injected"):
            await eng.format(P(image), KEK_A, FormatOptions(force=True))
    finally:
        await eng.stop()
    assert h.header_bytes(image) == before
    assert not list((state_dir / "formats").glob("*.json"))
