"""The header cache never serves a stale header, whoever changed the header."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.host import engine_helpers as h
from wkd import errors, luks2
from wkd.headers import HeaderCache
from wkd.model import FormatOptions

_skip = h.need_tools()
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")


async def test_cache_hits_and_sees_outside_changes(tmp_path: Path) -> None:
    eng = h.new_engine(tmp_path / "state")
    await eng.start()
    try:
        img = h.make_image(tmp_path / "v.img")
        await eng.format(str(img), None, FormatOptions(label="one"))
    finally:
        await eng.stop()
    cache = HeaderCache()
    first = cache.read(str(img))
    assert cache.read(str(img)) is first, "an unchanged header must be served from the cache"
    # An administrator changes the header behind wkd's back (cryptsetup, another process).
    subprocess.run(["cryptsetup", "config", "--label", "two", str(img)], check=True)
    second = cache.read(str(img))
    assert second is not first and second.label == "two"
    # A token added by cryptsetup is seen too.
    (tok,) = h.wkd_tokens(img).values()
    doc = dict(tok, generation=5)
    subprocess.run(["cryptsetup", "token", "import", str(img)], input=json.dumps(doc),
                   text=True, check=True)
    third = cache.read(str(img))
    assert sorted(t.generation for t in third.tokens.values()) == [1, 5]


def test_cache_does_not_hide_a_vanished_volume(tmp_path: Path) -> None:
    img = h.make_image(tmp_path / "x.img")
    with open(img, "r+b") as f:
        f.write(b"not luks")
    with pytest.raises(errors.NotAWkdVolume):
        HeaderCache().read(str(img))
    assert luks2.read_uuid(str(img)) is None
