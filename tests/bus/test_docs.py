"""Run the busctl examples of docs/dbus-api.md against the real service (the rest of the page
is held against the API definition by tests/unit/test_bus_api.py)."""

from __future__ import annotations

import re
import shlex
import subprocess

from tests.bus.conftest import REPO


def _examples() -> list[str]:
    text = (REPO / "docs" / "dbus-api.md").read_text()
    block = text.split("## busctl examples", 1)[1]
    lines: list[str] = []
    for code in re.findall(r"```sh\n(.*?)```", block, re.S):
        lines += [ln for ln in code.splitlines() if ln.startswith("busctl ")]
    return lines


def test_doc_examples_run(wkd_daemon, image):
    lines = _examples()
    assert len(lines) >= 8
    for line in lines:
        cmd = [a.replace("$ADDR", wkd_daemon.address).replace("$IMG", image)
               for a in shlex.split(line)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (line, r.stderr)
