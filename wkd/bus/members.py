"""Binding interface classes to the API definition (org.wkd1.xml) for dbus-fast.

An interface class writes only what its members do; their D-Bus names, argument names and
signatures come from the XML through these decorators:

    @exported(MANAGER)
    class Manager(ServiceInterface):
        @method(MANAGER, "Format")
        async def format(self, device: str, kek_label: str, options: Opts) -> str: ...
        def property_value(self, name: str) -> Any: ...   # every XML property, by name

`method` runs the call through wkd.bus.call.run_call (authorization first, error mapping),
`signal` emits with the XML's signature, and `exported` adds a getter for each property of
the XML and refuses, at import, a class whose methods or signals differ from the XML: the
code cannot export what the definition does not say, nor miss what it does.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from dbus_fast import PropertyAccess, Variant
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from wkd.bus.api import API, ApiError, InterfaceSpec
from wkd.bus.call import run_call

C = TypeVar("C", bound=type[ServiceInterface])
Body = Callable[..., Awaitable[Any]]

_MEMBER_ATTR = "__wkd_member__"


def _signature(params: list[tuple[str, str]], returns: str) -> inspect.Signature:
    # dbus-fast reads a member's D-Bus types from its annotations; a string that looks like
    # a signature is taken as one (dbus_fast/_private/util.py, parse_annotation).
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                     annotation=sig) for name, sig in params]
    return inspect.Signature(parameters,
                             return_annotation=returns or inspect.Signature.empty)


def method(interface: str, name: str) -> Callable[[Body], Any]:
    """Export `body` as the XML's `interface`.`name`."""
    spec = API.method(interface, name)

    def decorate(body: Body) -> Any:
        n_args = len(inspect.signature(body).parameters) - 1
        if n_args != len(spec.in_args):
            raise ApiError(f"{interface}.{name}: the XML has {len(spec.in_args)} in "
                           f"arguments, {body.__qualname__} takes {n_args}")

        async def handler(self: ServiceInterface, *args: Any) -> Any:
            return await run_call(spec, args, lambda: body(self, *args))

        handler.__name__, handler.__qualname__ = body.__name__, body.__qualname__
        handler.__signature__ = _signature(  # type: ignore[attr-defined]
            list(spec.in_args), spec.out_signature)
        exported_fn = dbus_method(name=name)(handler)
        _name_args(exported_fn.__dict__["__DBUS_METHOD"].introspection.out_args,
                   spec.out_args)
        setattr(exported_fn, _MEMBER_ATTR, ("method", interface, name))
        return exported_fn

    return decorate


def signal(interface: str, name: str) -> Callable[[Callable[..., Any]], Any]:
    """Emit the XML's signal `interface`.`name` by calling the decorated function."""
    args = API.interface(interface).signals.get(name)
    if args is None:
        raise ApiError(f"{interface}.{name} is not a signal of org.wkd1.xml")

    def decorate(fn: Callable[..., Any]) -> Any:
        params = list(inspect.signature(fn).parameters)[1:]
        fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD)
             for p in ["self", *params]], return_annotation="".join(s for _n, s in args))
        emitted = dbus_signal(name=name)(fn)
        _name_args(emitted.__dict__["__DBUS_SIGNAL"].introspection.args, args)
        setattr(emitted, _MEMBER_ATTR, ("signal", interface, name))
        return emitted

    return decorate


def _name_args(introspected: list[Any], args: tuple[tuple[str, str], ...]) -> None:
    """dbus-fast names no out argument; introspection should show the XML's names."""
    for arg, (arg_name, _sig) in zip(introspected, args, strict=True):
        arg.name = arg_name or None


def _property(name: str, signature: str) -> Any:
    def get(self: Any) -> Any:
        return self.property_value(name)

    get.__name__ = get.__qualname__ = f"property_{name}"
    get.__signature__ = _signature([], signature)  # type: ignore[attr-defined]
    return dbus_property(access=PropertyAccess.READ, name=name)(get)


def exported(interface: str) -> Callable[[C], C]:
    """Complete `cls` with the XML's properties and check it against the XML."""
    spec = API.interface(interface)

    def decorate(cls: C) -> C:
        members = {getattr(v, _MEMBER_ATTR) for v in vars(cls).values()
                   if hasattr(v, _MEMBER_ATTR)}
        expected = {("method", interface, m) for m in spec.methods} | \
                   {("signal", interface, s) for s in spec.signals}
        if members != expected:
            raise ApiError(f"{cls.__qualname__} differs from org.wkd1.xml's {interface}: "
                           f"missing {sorted(expected - members)}, "
                           f"extra {sorted(members - expected)}")
        if spec.properties and not callable(getattr(cls, "property_value", None)):
            raise ApiError(f"{cls.__qualname__} needs property_value(name)")
        for prop, sig in spec.properties.items():
            setattr(cls, f"property_{prop}", _property(prop, sig))
        return cls

    return decorate


def variants(spec: InterfaceSpec, values: Mapping[str, Any]) -> dict[str, Variant]:
    """Property values as the Variants of InterfacesAdded/GetManagedObjects, typed by the XML.
    `values` must name exactly the XML's properties."""
    if set(values) != set(spec.properties):
        raise ApiError(f"{spec.name}: property values differ from the XML: "
                       f"{sorted(set(values) ^ set(spec.properties))}")
    return {name: Variant(spec.properties[name], values[name]) for name in spec.properties}
