"""Builders of the pure values the core planners take (tokens, probes, dm state)."""

from __future__ import annotations

import os

from wkd.core.facts import (
    DeviceFacts,
    DeviceKind,
    DmMapping,
    DmState,
    Header,
    HeaderRead,
    MappingRecord,
    Probe,
)
from wkd.model import Mechanism, TokenState, WrappedKey
from wkd.token import WkdToken, new_token
from wkd.values import VolumeUuid

U1 = VolumeUuid("4f6c2a8e-3c1b-4d0e-9a57-0d1f3c2b1a00")
U2 = VolumeUuid("9d0f1b2c-0000-4000-8000-00000000beef")


def dev_t(major: int, minor: int) -> int:
    return os.makedev(major, minor)


def token(gen: int = 1, state: TokenState = TokenState.ACTIVE, kek: str = "kek-a",
          kek_id: str = "0a", blob: int = 0, auto: bool = False) -> WkdToken:
    wrapped = WrappedKey(kek_label=kek, kek_id=kek_id, mechanism=Mechanism.AES_KEY_WRAP_PAD,
                         blob=bytes([blob]) * 72, key_bytes=64)
    return new_token(wrapped, cipher="aes-xts-plain64", auto_unlock=auto, generation=gen,
                     state=state)


def device(path: str = "/dev/vdb", rdev: int | None = None, size: int = 64 << 20,
           kind: DeviceKind = DeviceKind.BLOCK) -> DeviceFacts:
    if rdev is None:
        rdev = dev_t(253, 16) if kind is DeviceKind.BLOCK else 0
    return DeviceFacts(path=path, kind=kind, size=size, rdev=rdev)


def header(path: str = "/dev/vdb", uuid: VolumeUuid = U1,
           tokens: dict[int, WkdToken] | None = None,
           invalid: dict[int, str] | None = None) -> Header:
    return Header(path=path, uuid=uuid, label="", cipher="aes-xts-plain64",
                  tokens={0: token()} if tokens is None else tokens, invalid=invalid or {})


def probe(path: str = "/dev/vdb", uuid: VolumeUuid = U1, rdev: int | None = None, *,
          damaged: str = "", tokens: dict[int, WkdToken] | None = None,
          invalid: dict[int, str] | None = None, luks: bool = True) -> Probe:
    facts = device(path, rdev)
    if not luks:
        return Probe(facts, HeaderRead(path=path))
    if damaged:
        return Probe(facts, HeaderRead(path=path, damaged=damaged, raw_uuid=uuid))
    return Probe(facts, HeaderRead(path=path, header=header(path, uuid, tokens, invalid)))


def mapping(name: str, uuid: VolumeUuid = U1, on: str = "vdb", on_dev: int | None = None,
            files: tuple[str, ...] = ()) -> DmMapping:
    return DmMapping(name=name, dm_uuid=f"CRYPT-LUKS2-{uuid.replace('-', '')}-{name}",
                     node="/dev/dm-0", dev=dev_t(254, 0), backing_names=(on,),
                     backing_devs=(dev_t(253, 16) if on_dev is None else on_dev,),
                     backing_files=files)


def dm(*mappings: DmMapping, available: bool = True) -> DmState:
    return DmState(available=available, mappings=tuple(mappings))


def record(name: str, uuid: VolumeUuid = U1, device_path: str = "/dev/vdb",
           backing: int | None = None) -> MappingRecord:
    return MappingRecord(name=name, uuid=uuid, device=device_path,
                         backing_dev=dev_t(253, 16) if backing is None else backing)
