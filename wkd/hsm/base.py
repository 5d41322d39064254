"""The HSM backend protocol: what the engine needs from a key store, nothing more.

A backend holds key-encryption keys (KEKs) that never leave it and performs four operations on
volume keys: generate-and-wrap, unwrap (into a `SecretKey`), rewrap (old KEK -> new KEK without
the clear key leaving the HSM) and KEK management. Every method is a coroutine; a backend that
wraps a blocking C API (PKCS#11) serialises the calls on one thread of its own.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from wkd.errors import KekExists, KekNotFound
from wkd.model import HsmInfo, KekInfo, WrappedKey
from wkd.secret import SecretKey


@runtime_checkable
class HsmBackend(Protocol):
    async def open(self) -> None:
        """Load the module, find the token and log in. Raises HsmUnavailable/HsmLoginFailed."""

    async def close(self) -> None:
        """Log out and release the module. Idempotent."""

    async def info(self) -> HsmInfo: ...

    async def list_keks(self) -> list[KekInfo]: ...

    async def get_kek(self, label: str) -> KekInfo:
        """The KEK with this label, or KekNotFound."""

    async def create_kek(self, label: str) -> KekInfo:
        """Generate an AES-256 KEK: token object, non-extractable, sensitive, WRAP/UNWRAP only.
        Raises KekExists if a KEK with this label is present."""

    async def generate_wrapped_key(self, kek_label: str, key_bytes: int) -> WrappedKey:
        """Generate a random volume key inside the HSM and return it wrapped under the KEK."""

    async def unwrap(self, wrapped: WrappedKey) -> SecretKey:
        """Unwrap into locked memory. Raises KekNotFound or UnwrapFailed (wrong KEK, tampered
        blob)."""

    async def rewrap(self, wrapped: WrappedKey, new_kek_label: str) -> WrappedKey:
        """Unwrap under the old KEK and wrap under the new one inside the HSM; the clear key
        exists only as a sensitive, non-extractable session object."""


async def ensure_kek(backend: HsmBackend, label: str) -> tuple[KekInfo, bool]:
    """The KEK `label`, created if missing; the flag says whether this call created it."""
    try:
        return await backend.get_kek(label), False
    except KekNotFound:
        pass
    try:
        return await backend.create_kek(label), True
    except KekExists:  # created meanwhile by another process on the same token
        return await backend.get_kek(label), False
