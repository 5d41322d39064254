"""Run the busctl examples of docs/dbus-api.md against the real service."""

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


def test_doc_lists_every_error_and_member():
    from wkd.errors import all_errors

    text = (REPO / "docs" / "dbus-api.md").read_text()
    for cls in all_errors():
        assert cls.dbus_name.rsplit(".", 1)[1] in text, cls.dbus_name
    from dbus_fast.introspection import Node

    node = Node.parse((REPO / "dbus" / "org.wkd1.xml").read_text())
    for iface in node.interfaces:
        for m in [*iface.methods, *iface.properties, *iface.signals]:
            assert f"`{m.name}" in text or f" {m.name}" in text, m.name
