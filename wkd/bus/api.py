"""The org.wkd1 API, read from its one definition: the introspection XML.

dbus/org.wkd1.xml is the single source of the bus name, the object paths, every member's
name and signature, which methods may carry file descriptors and who may call what. It is
shipped inside this package (org.wkd1.xml here is a link to it in the source tree, a copy
in a built package) and parsed once, at import. Everything else — the interface classes
(wkd/bus/members.py checks them against it at import), wkdctl, devtools/ and the tests —
takes its names from here, so the definition cannot drift from the code that serves it.

Why the XML and not a Python source that generates it: the XML is what other tools consume
as is (busctl introspect, gdbus-codegen, Cockpit, the interface file installed under
/usr/share/dbus-1/interfaces/, the manual page), it carries the documentation comments
next to each member, and parsing it is cheap (~1 ms). A Python source would need a
generator and a check that the committed XML is current; the XML needs neither.

Pure apart from reading the one file; dbus-fast is used only as the XML parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from dbus_fast.introspection import Arg, Interface, Method, Node

XML_PATH: Final = Path(__file__).with_name("org.wkd1.xml")

# wkd's own annotations in the XML (the file's header explains each).
A_BUS_NAME: Final = "org.wkd1.BusName"
A_OBJECT_PATH: Final = "org.wkd1.ObjectPath"
A_AUTHORIZATION: Final = "org.wkd1.Authorization"
A_PROPERTY_ACCESS: Final = "org.wkd1.PropertyAccess"
A_UNIX_FDS: Final = "org.wkd1.UnixFds"

PUBLIC: Final = "public"  # a read anyone may make
DENY: Final = "deny"  # root only: the default when nothing else is said
OPTIONS_ARG: Final = "options"  # every method's a{sv}; `interactive` in it selects polkit flags

# Standard interfaces (D-Bus specification, "Standard Interfaces"); dbus-fast serves them.
PROPERTIES: Final = "org.freedesktop.DBus.Properties"
INTROSPECTABLE: Final = "org.freedesktop.DBus.Introspectable"
PEER: Final = "org.freedesktop.DBus.Peer"
OBJECT_MANAGER: Final = "org.freedesktop.DBus.ObjectManager"
STANDARD_INTERFACES: Final = frozenset({PROPERTIES, INTROSPECTABLE, PEER, OBJECT_MANAGER})


class ApiError(Exception):
    """The XML is inconsistent, or code asked for a member it does not define."""


@dataclass(frozen=True, slots=True)
class MethodSpec:
    interface: str
    name: str
    in_args: tuple[tuple[str, str], ...]  # (name, signature)
    out_args: tuple[tuple[str, str], ...]
    authorization: str  # PUBLIC, DENY or a polkit action id
    unix_fds: int  # descriptors a call may carry

    @property
    def in_signature(self) -> str:
        return "".join(sig for _name, sig in self.in_args)

    @property
    def out_signature(self) -> str:
        return "".join(sig for _name, sig in self.out_args)

    @property
    def public(self) -> bool:
        return self.authorization == PUBLIC

    @property
    def options_index(self) -> int:
        names = [name for name, _sig in self.in_args]
        return names.index(OPTIONS_ARG)


@dataclass(frozen=True, slots=True)
class InterfaceSpec:
    name: str
    path: str  # an object path, or a template with one {placeholder}
    methods: Mapping[str, MethodSpec]
    properties: Mapping[str, str]  # name -> signature; all read-only, all public reads
    signals: Mapping[str, tuple[tuple[str, str], ...]]  # name -> its (name, signature) args

    @property
    def path_prefix(self) -> str:
        """For a template such as /org/wkd1/volume/{uuid}: "/org/wkd1/volume/"."""
        return self.path.split("{", 1)[0]


@dataclass(frozen=True, slots=True)
class Api:
    bus_name: str
    interfaces: Mapping[str, InterfaceSpec]

    def interface(self, name: str) -> InterfaceSpec:
        try:
            return self.interfaces[name]
        except KeyError:
            raise ApiError(f"{name} is not defined in org.wkd1.xml") from None

    def method(self, interface: str, name: str) -> MethodSpec:
        try:
            return self.interface(interface).methods[name]
        except KeyError:
            raise ApiError(f"{interface}.{name} is not defined in org.wkd1.xml") from None

    def actions(self) -> frozenset[str]:
        """Every polkit action some method needs."""
        return frozenset(m.authorization for i in self.interfaces.values()
                         for m in i.methods.values() if m.authorization not in (PUBLIC, DENY))


def _args(args: list[Arg]) -> tuple[tuple[str, str], ...]:
    return tuple((a.name or "", a.signature if isinstance(a.signature, str)
                  else a.signature.signature) for a in args)


def _method(iface: Interface, default_auth: str, m: Method) -> MethodSpec:
    in_args = _args(m.in_args)
    if any(not name for name, _sig in in_args):
        raise ApiError(f"{iface.name}.{m.name}: every in argument needs a name")
    if (OPTIONS_ARG, "a{sv}") not in in_args:
        raise ApiError(f"{iface.name}.{m.name}: every method takes an a{{sv}} {OPTIONS_ARG}")
    fds = m.annotations.get(A_UNIX_FDS, "0")
    if not fds.isdigit():
        raise ApiError(f"{iface.name}.{m.name}: {A_UNIX_FDS} must be a count")
    return MethodSpec(
        interface=iface.name, name=m.name, in_args=in_args,
        out_args=_args(m.out_args),
        authorization=m.annotations.get(A_AUTHORIZATION, default_auth), unix_fds=int(fds))


def _interface(iface: Interface) -> InterfaceSpec:
    path = iface.annotations.get(A_OBJECT_PATH)
    if not path or not path.startswith("/"):
        raise ApiError(f"{iface.name}: {A_OBJECT_PATH} is missing")
    default_auth = iface.annotations.get(A_AUTHORIZATION, DENY)
    methods = {m.name: _method(iface, default_auth, m) for m in iface.methods}
    props = {p.name: p.signature for p in iface.properties}
    for p in iface.properties:
        if p.access.writable():
            raise ApiError(f"{iface.name}.{p.name}: properties are read-only")
    if props and iface.annotations.get(A_PROPERTY_ACCESS) != PUBLIC:
        # dbus-fast answers Properties.Get itself, without our authorization step, so the
        # only honest marking is "public"; the XML must say it.
        raise ApiError(f"{iface.name}: properties need {A_PROPERTY_ACCESS}=\"public\"")
    signals = {s.name: _args(s.args) for s in iface.signals}
    return InterfaceSpec(name=iface.name, path=path, methods=MappingProxyType(methods),
                         properties=MappingProxyType(props),
                         signals=MappingProxyType(signals))


def parse_api(xml: str) -> Api:
    """The API from the text of org.wkd1.xml (pure)."""
    node = Node.parse(xml)
    if not node.interfaces:
        raise ApiError("org.wkd1.xml defines no interface")
    names = {i.annotations.get(A_BUS_NAME) for i in node.interfaces}
    if len(names) != 1 or None in names:
        raise ApiError(f"every interface needs the same {A_BUS_NAME}")
    (bus_name,) = names
    assert bus_name is not None
    interfaces = {i.name: _interface(i) for i in node.interfaces}
    return Api(bus_name=bus_name, interfaces=MappingProxyType(interfaces))


API: Final = parse_api(XML_PATH.read_text(encoding="utf-8"))

# The names the code refers to; each lookup fails at import if the XML lacks it.
BUS_NAME: Final = API.bus_name
MANAGER: Final = API.interface("org.wkd1.Manager").name
VOLUME: Final = API.interface("org.wkd1.Volume").name
JOB: Final = API.interface("org.wkd1.Job").name
WKD_INTERFACES: Final = frozenset(API.interfaces)
ROOT_PATH: Final = API.interface(MANAGER).path
VOLUME_PREFIX: Final = API.interface(VOLUME).path_prefix
JOB_PREFIX: Final = API.interface(JOB).path_prefix


def volume_path(uuid: str) -> str:
    # Object path elements allow only [A-Za-z0-9_] (D-Bus spec, "Valid Object Paths").
    return VOLUME_PREFIX + uuid.replace("-", "_")


def uuid_from_path(path: str) -> str | None:
    if not path.startswith(VOLUME_PREFIX):
        return None
    return path[len(VOLUME_PREFIX):].replace("_", "-")


def job_path(number: int) -> str:
    return f"{JOB_PREFIX}{number}"
