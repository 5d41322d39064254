"""Shared SoftHSM2 fixtures: `from tests.host.softhsm_fixture import *` in a test module.

- `softhsm_token`: a fresh embedded token (wkd.hsm.softhsm.ensure_embedded_token) in the
  test's tmp dir, with SOFTHSM2_CONF pointing at it for the duration of the test.
- `hsm`: an opened Pkcs11Backend on that token with two KEKs, "kek-a" and "kek-b"; closed at
  teardown.

SOFTHSM2_CONF is process-global and SoftHSM2 reads it only in C_Initialize. python-pkcs11
caches one `lib` per module path, but Pkcs11Backend calls C_Finalize when the last backend
of a module closes, and the next open() runs C_Initialize again, which re-reads the variable
(checked: `lib.reinitialize()` switches token directories). So a fresh token per test works
provided every backend of the previous test was closed; `softhsm_token` fails loudly
otherwise. Within one test, all backends share the one token directory.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from wkd.hsm.pkcs11 import Pkcs11Backend, module_in_use
from wkd.hsm.softhsm import SOFTHSM_MODULE, EmbeddedToken, ensure_embedded_token

__all__ = ["KEK_A", "KEK_B", "hsm", "softhsm_token"]

KEK_A = "kek-a"
KEK_B = "kek-b"


@pytest.fixture
def softhsm_token(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> EmbeddedToken:
    if not os.path.exists(SOFTHSM_MODULE):
        pytest.skip(f"SoftHSM2 is not installed ({SOFTHSM_MODULE} missing)")
    if module_in_use(SOFTHSM_MODULE):
        pytest.fail("a Pkcs11Backend from an earlier test is still open: SoftHSM2 would keep "
                    "the old SOFTHSM2_CONF; close every backend in teardown")
    # Registered with monkeypatch so the variable is restored after the test;
    # ensure_embedded_token then sets it to the same value.
    monkeypatch.setenv("SOFTHSM2_CONF", os.path.join(str(tmp_path), "hsm", "softhsm2.conf"))
    return ensure_embedded_token(os.path.join(str(tmp_path), "hsm"))


@pytest.fixture
async def hsm(softhsm_token: EmbeddedToken) -> AsyncIterator[Pkcs11Backend]:
    backend = Pkcs11Backend(softhsm_token.module, softhsm_token.token_label,
                            softhsm_token.read_pin(), embedded=True)
    await backend.open()
    try:
        await backend.create_kek(KEK_A)
        await backend.create_kek(KEK_B)
        yield backend
    finally:
        await backend.close()
