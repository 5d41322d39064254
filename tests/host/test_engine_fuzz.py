"""Property test: whatever a wkd token's JSON is turned into, every engine operation either
works (the mutation kept it valid) or raises a typed wkd error, and an operation that fails
leaves the LUKS2 header byte-for-byte unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.host import engine_helpers as h
from wkd import errors
from wkd.disk import luks2
from wkd.model import FormatOptions, UnlockOptions, VolumeCondition
from wkd.values import DevicePath, KekLabel

_skip = h.need_tools()
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")

FIELDS = ["version", "backend", "kek_label", "kek_id", "mechanism", "wrapped_key", "key_bytes",
          "cipher", "state", "created", "auto_unlock", "generation"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.text(max_size=40)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=3),
    max_leaves=6)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, str, Any]:
    kind = draw(st.sampled_from(["set", "drop", "add", "blob"]))
    field = draw(st.sampled_from(FIELDS))
    if kind == "set":
        return kind, field, draw(json_values)
    if kind == "add":
        return kind, draw(st.text(min_size=1, max_size=12)), draw(json_values)
    if kind == "blob":
        import base64

        return kind, "wrapped_key", base64.b64encode(draw(st.binary(max_size=80))).decode()
    return kind, field, None


class _World:
    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.image = h.make_image(tmp / "fuzz.img")
        self.engine = h.new_engine(tmp / "state")
        self.loop.run_until_complete(self.engine.start())
        with contextlib.suppress(errors.KekExists):
            self.loop.run_until_complete(self.engine.create_kek(KekLabel("kek-b")))
        self.info = self.loop.run_until_complete(
            self.engine.format(DevicePath(str(self.image)), None, FormatOptions()))
        ((self.tid, self.valid),) = h.wkd_tokens(self.image).items()

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.stop())
        self.loop.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    w = _World(tmp_path_factory.mktemp("fuzz"))
    yield w
    w.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(m=mutations())
def test_mutated_token_gives_typed_error_and_unchanged_header(world: _World,
                                                              m: tuple[str, str, Any]) -> None:
    kind, field, value = m
    doc = dict(world.valid)
    if kind == "drop":
        doc.pop(field, None)
    else:
        doc[field] = value
    with luks2.Luks2Device.open(str(world.image)) as dev:
        try:
            dev.token_json_set(world.tid, json.dumps(doc))
        except errors.LuksError:
            return  # libcryptsetup itself refused the JSON: nothing reached the header
    path = DevicePath(str(world.image))
    condition = None
    try:
        for op in ("get", "list", "verify", "rewrap"):
            before = h.header_bytes(world.image)
            coro = {"get": lambda: world.engine.get_volume(path),
                    "list": lambda: world.engine.list_volumes(),
                    "verify": lambda: world.engine.unlock(path, UnlockOptions(verify_only=True)),
                    "rewrap": lambda: world.engine.rewrap(path, KekLabel("kek-b"))}[op]()
            try:
                result = world.loop.run_until_complete(coro)
            except errors.WkdError as e:
                assert h.header_bytes(world.image) == before, f"{op} failed but changed the header"
                # One view: what get shows as damaged, every operation refuses as damaged.
                if condition is VolumeCondition.DAMAGED:
                    assert isinstance(e, errors.VolumeDamaged), f"{op}: {e.dbus_name}"
                continue
            except Exception as e:  # pragma: no cover - the failure this test exists to catch
                pytest.fail(f"{op} raised an untyped {type(e).__name__} for mutation {kind} "
                            f"{field!r}")
            if op == "get":
                condition = result.condition
            elif op == "list":
                (listed,) = [v for v in result if v.uuid == world.info.uuid]
                assert listed.condition is condition, "ListVolumes and GetVolume disagree"
            else:
                assert condition is VolumeCondition.OK, f"{op} acted on a {condition} volume"
    finally:
        # Put the valid token back for the next example (a successful rewrap may have moved it).
        with luks2.Luks2Device.open(str(world.image)) as dev:
            for tid, ty in dev.token_list().items():
                if ty == "wkd":
                    dev.token_remove(tid)
            world.tid = dev.token_json_set(None, json.dumps(world.valid))
