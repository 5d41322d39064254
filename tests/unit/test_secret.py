"""wkd.secret: the locked, wiped key buffer."""

from __future__ import annotations

import os
import pickle
import resource
import shutil
import subprocess
import sys

import pytest

from wkd.secret import (
    MAX_KEY_BYTES,
    SecretKey,
    process_dumpable,
    scrub_bytes,
)

KEY = bytes(range(1, 65))


def test_repr_and_str_hide_content():
    key = SecretKey.from_bytes(bytearray(KEY))
    for text in (repr(key), str(key), f"{key}", f"{key!r}"):
        assert text == "<SecretKey 64 bytes>"
        assert KEY.hex() not in text


def test_bytes_and_pickle_refused():
    key = SecretKey.from_bytes(bytearray(KEY))
    with pytest.raises(TypeError):
        bytes(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_from_bytes_copies_and_scrubs_source():
    src = bytes(bytearray(KEY))  # a fresh object, not the module constant
    key = SecretKey.from_bytes(src)
    assert src == bytes(64)  # scrubbed in place
    assert key.reveal_for_test() == KEY
    buf = bytearray(KEY)
    key2 = SecretKey.from_bytes(buf)
    assert buf == bytearray(64)
    assert key.equals(key2)


def test_scrub_bytes_leaves_singletons_alone():
    one = b"a"
    scrub_bytes(one)
    assert one == b"a"
    data = bytes(bytearray(b"abcdef"))
    scrub_bytes(data)
    assert data == bytes(6)


def test_equals():
    a = SecretKey.from_bytes(bytearray(KEY))
    b = SecretKey.from_bytes(bytearray(KEY))
    c = SecretKey.from_bytes(bytearray(KEY[:-1] + b"\0"))
    d = SecretKey.from_bytes(bytearray(KEY[:32]))
    assert a.equals(b) and not a.equals(c) and not a.equals(d)


def test_wipe_zeroes_before_unmapping():
    key = SecretKey.from_bytes(bytearray(KEY))
    # Hold a second export of the mapping: wipe() then zeroes the pages but cannot unmap
    # them (BufferError), so the zeroing can be observed on still-mapped memory.
    mv = memoryview(key._map)  # type: ignore[arg-type]
    try:
        assert key.reveal_for_test() == KEY
        with pytest.raises(BufferError):
            key.wipe()
        assert mv.tobytes() == bytes(len(mv))
    finally:
        mv.release()
        key._map.close()  # type: ignore[union-attr]


def test_wipe_releases_and_is_idempotent():
    key = SecretKey.from_bytes(bytearray(KEY))
    key.wipe()
    with pytest.raises(ValueError):
        key.reveal_for_test()
    with pytest.raises(ValueError):
        _ = key.address
    key.wipe()


def test_context_manager_wipes():
    with SecretKey.from_bytes(bytearray(KEY)) as key:
        assert key.reveal_for_test() == KEY
    with pytest.raises(ValueError):
        key.reveal_for_test()


@pytest.mark.parametrize("length", [0, -1, MAX_KEY_BYTES + 1])
def test_length_bounds(length):
    with pytest.raises(ValueError):
        SecretKey(length)


def test_locked_under_default_rlimit():
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if os.getuid() != 0 and soft != resource.RLIM_INFINITY and soft < 65536:
        pytest.skip(f"RLIMIT_MEMLOCK {soft} too small for an unprivileged mlock")
    key = SecretKey(64)
    assert key.locked
    key.wipe()


def test_not_locked_is_reported_under_zero_rlimit():
    # `locked` must tell the truth when mlock fails (the key still works and is wiped).
    # Root has CAP_IPC_LOCK and ignores RLIMIT_MEMLOCK, so drop to nobody for the child.
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0));"
        "from wkd.secret import SecretKey; k = SecretKey(64); print(k.locked, k.length)"
    )
    cmd = [sys.executable, "-c", code]
    if os.getuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root needs setpriv (util-linux) to run the child without CAP_IPC_LOCK")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": _repo_root()})
    assert out.stdout.split() == ["False", "64"]


def test_make_process_undumpable_in_child():
    code = (
        "from wkd.secret import make_process_undumpable, process_dumpable;"
        "a = process_dumpable(); make_process_undumpable(); b = process_dumpable();"
        "print(a, b)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": _repo_root()})
    assert out.stdout.split() == ["True", "False"]
    assert process_dumpable()  # only the child changed


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
