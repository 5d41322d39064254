"""The API definition (dbus/org.wkd1.xml) against the code that serves it and against its
documentation, with no bus: dbus-fast introspects a ServiceInterface object offline.

What would fail here: an interface class that exports a member the XML lacks or lacks one it
has (it refuses to load), a signature or argument name that differs, a member, property,
option, error or limit that docs/dbus-api.md does not explain, a polkit action that the
policy file does not declare, a method that is not explicitly public or authorized.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from dbus_fast.introspection import Interface, Node
from dbus_fast.service import ServiceInterface

from wkd.bus import api, limits
from wkd.bus import options as opt
from wkd.bus.api import API, DENY, PUBLIC, ApiError, parse_api
from wkd.bus.interfaces import Manager
from wkd.bus.jobs import JobObject
from wkd.bus.members import exported, method
from wkd.bus.tree import VolumeObject, volume_properties
from wkd.errors import ERROR_PREFIX, all_errors
from wkd.model import VolumeInfo

ROOT = Path(__file__).resolve().parents[2]
XML = ROOT / "dbus" / "org.wkd1.xml"
DOC = ROOT / "docs" / "dbus-api.md"
INFO = VolumeInfo(uuid="01234567-89ab-cdef-0123-456789abcdef", device="/dev/x", kek_label="k",
                  kek_id="00", cipher="aes-xts-plain64", key_bits=512, auto_unlock=False,
                  created="2026-01-01T00:00:00Z", mapping=None)


def _shape(iface: Interface) -> dict[str, Any]:
    return {
        "methods": {m.name: ([(a.name, a.signature) for a in m.in_args],
                             [(a.name, a.signature) for a in m.out_args])
                    for m in iface.methods},
        "signals": {s.name: [(a.name, a.signature) for a in s.args] for s in iface.signals},
        "properties": {p.name: (p.signature, p.access.value) for p in iface.properties},
    }


def _exported() -> dict[str, ServiceInterface]:
    return {api.MANAGER: Manager(None, None),  # type: ignore[arg-type]
            api.VOLUME: VolumeObject(INFO, None),  # type: ignore[arg-type]
            api.JOB: JobObject(1, "rewrap-all", 0)}


def test_every_exported_interface_is_the_xml():
    canon = {i.name: _shape(i) for i in Node.parse(XML.read_text()).interfaces}
    ours = {name: _shape(obj.introspect()) for name, obj in _exported().items()}
    assert ours == canon


def test_the_package_ships_the_same_definition():
    assert api.XML_PATH.read_bytes() == XML.read_bytes()


def test_names_come_from_the_xml():
    assert api.BUS_NAME == "org.wkd1"
    assert ERROR_PREFIX == api.BUS_NAME + ".Error."
    assert api.ROOT_PATH == "/org/wkd1"
    assert api.volume_path(INFO.uuid) == "/org/wkd1/volume/01234567_89ab_cdef_0123_456789abcdef"
    assert api.uuid_from_path(api.volume_path(INFO.uuid)) == INFO.uuid
    assert api.job_path(3) == "/org/wkd1/job/3"


def test_volume_properties_are_the_xml_properties():
    assert set(volume_properties(INFO)) == set(API.interface(api.VOLUME).properties)
    assert set(JobObject(1, "x", 0).variants()) == set(API.interface(api.JOB).properties)
    props = VolumeObject(INFO, None).variants()  # type: ignore[arg-type]
    assert props["Condition"].value == "ok" and props["Condition"].signature == "s"
    assert props["ConditionDetail"].value == ""


def test_every_method_is_explicitly_public_or_authorized():
    """Deny by default: only what the XML marks is reachable by non-root callers; reads are
    marked public one by one, everything else names its polkit action."""
    seen = {}
    for iface in API.interfaces.values():
        for m in iface.methods.values():
            seen[f"{iface.name}.{m.name}"] = m.authorization
    assert {k for k, v in seen.items() if v == PUBLIC} == {
        "org.wkd1.Manager.ListKeks", "org.wkd1.Manager.ListVolumes"}
    assert DENY not in seen.values()
    root = ET.parse(XML).getroot()
    for iface in root.iter("interface"):
        defaults = [a.get("value") for a in iface.findall("annotation")
                    if a.get("name") == api.A_AUTHORIZATION]
        assert defaults == [DENY], iface.get("name")  # the interface default is deny
        for m in iface.iter("method"):
            marks = [a for a in m.findall("annotation") if a.get("name") == api.A_AUTHORIZATION]
            assert len(marks) == 1, m.get("name")  # each method says it explicitly


def test_polkit_policy_declares_exactly_the_actions():
    policy = ET.parse(ROOT / "packaging" / "polkit" / "org.wkd1.policy").getroot()
    assert {a.get("id") for a in policy.iter("action")} == API.actions()


def test_only_format_takes_descriptors():
    takes = {f"{i.name}.{m.name}": m.unix_fds for i in API.interfaces.values()
             for m in i.methods.values() if m.unix_fds}
    assert takes == {"org.wkd1.Manager.Format": 1}


_MINIMAL = """<node><interface name="a.B">
  <annotation name="org.wkd1.BusName" value="a.b"/>
  <annotation name="org.wkd1.ObjectPath" value="/a"/>
  {extra}
  <method name="M">{margs}<arg name="options" direction="in" type="a{{sv}}"/></method>
</interface></node>"""


@pytest.mark.parametrize("extra,margs,problem", [
    ("", '<arg name="x" direction="in" type="s"/>', None),
    ('<property name="P" type="s" access="readwrite"/>', "", "read-only"),
    ('<property name="P" type="s" access="read"/>', "", "PropertyAccess"),
    ("", '<arg direction="in" type="s"/>', "needs a name"),
])
def test_parse_api_refuses_inconsistent_definitions(extra, margs, problem):
    text = _MINIMAL.format(extra=extra, margs=margs)
    if problem is None:
        parsed = parse_api(text)
        assert parsed.method("a.B", "M").authorization == DENY  # deny by default
        return
    with pytest.raises(ApiError, match=problem):
        parse_api(text)
    with pytest.raises(ApiError, match="options"):
        parse_api(_MINIMAL.format(extra="", margs="").replace(
            '<arg name="options" direction="in" type="a{sv}"/>', ""))


def test_code_that_differs_from_the_xml_does_not_load():
    with pytest.raises(ApiError, match="in arguments"):
        method(api.MANAGER, "Format")(_two_args)
    with pytest.raises(ApiError, match="not defined"):
        method(api.MANAGER, "Reformat")
    with pytest.raises(ApiError, match="missing"):
        @exported(api.JOB)
        class _NoSignal(ServiceInterface):
            def property_value(self, name: str) -> Any:
                return None


async def _two_args(self: Any, a: str, b: str) -> None:
    return None


# --- the documentation --------------------------------------------------------------------
def _doc() -> str:
    return DOC.read_text()


def test_doc_names_every_member_property_and_signal():
    text = _doc()
    for iface in API.interfaces.values():
        assert f"## {iface.name}" in text, iface.name
        for name in [*iface.methods, *iface.properties, *iface.signals]:
            assert re.search(rf"`{name}\b", text), f"{iface.name}.{name}"


def test_doc_names_every_error_action_option_and_limit():
    text = _doc()
    for cls in all_errors():
        assert cls.dbus_name.rsplit(".", 1)[1] in text, cls.dbus_name
    for action in API.actions():
        assert f"`{action}`" in text, action
    keys = opt.FORMAT_KEYS | opt.UNLOCK_KEYS | opt.LOCK_KEYS | opt.COMMON_KEYS
    for key in keys:
        assert f"`{key}`" in text, key
    for name in dir(limits):
        if name.startswith(("MAX_", "LOG_", "JOB_LINGER")) and name.isupper():
            assert f"`{name}`" in text, name
    assert "allow_passphrase_in_message" in text
