"""The running service exports exactly dbus/org.wkd1.xml (the offline check of every interface
class is tests/unit/test_bus_api.py), and the policy files agree with the code."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from dbus_fast.introspection import Interface, Node

from tests.bus.conftest import REPO, call, format_image

XML = REPO / "dbus" / "org.wkd1.xml"


def _shape(iface: Interface) -> dict[str, object]:
    return {
        "methods": {m.name: ([(a.name, a.signature) for a in m.in_args],
                             [a.signature for a in m.out_args]) for m in iface.methods},
        "signals": {s.name: [a.signature for a in s.args] for s in iface.signals},
        "properties": {p.name: (p.signature, p.access.value) for p in iface.properties},
    }


async def test_exports_exactly_the_canonical_xml(bus, image):
    canon = {i.name: _shape(i) for i in Node.parse(XML.read_text()).interfaces}
    vol = await format_image(bus, image)
    (job,) = await call(bus, "RewrapAll", "ssa{sv}", ["wkd-default", "wkd-default", {}])
    seen: dict[str, dict[str, object]] = {}
    for path, expect in (("/org/wkd1", "org.wkd1.Manager"), (vol, "org.wkd1.Volume"),
                         (job, "org.wkd1.Job")):
        node = await bus.introspect("org.wkd1", path)
        ours = [i for i in node.interfaces if i.name.startswith("org.wkd1.")]
        assert [i.name for i in ours] == [expect]
        seen[expect] = _shape(ours[0])
        names = {i.name for i in node.interfaces}
        if path == "/org/wkd1":
            assert "org.freedesktop.DBus.ObjectManager" in names
    assert seen == canon


def test_policy_actions_match_the_code():
    from wkd.bus.api import API

    root = ET.parse(REPO / "packaging" / "polkit" / "org.wkd1.policy").getroot()
    ids = {a.get("id") for a in root.iter("action")}
    assert ids == API.actions()
    defaults = {a.get("id"): a.find("defaults/allow_active").text for a in root.iter("action")}
    assert defaults["org.wkd1.unlock"] == "auth_admin_keep"
    assert defaults["org.wkd1.format"] == "auth_admin"


def test_activation_file_names_the_unit():
    text = (REPO / "dbus" / "org.wkd1.service").read_text()
    assert "Name=org.wkd1" in text
    assert "SystemdService=wkd.service" in text


def test_bus_policy_lets_only_root_own():
    root = ET.parse(REPO / "dbus" / "org.wkd1.conf").getroot()
    owners = [(p.get("user"), a.get("own")) for p in root.iter("policy")
              for a in p.iter("allow") if a.get("own")]
    assert owners == [("root", "org.wkd1")]


_ = Path
