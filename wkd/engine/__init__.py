"""Orchestration: the Engine facade and its parts, on the disk and HSM ports.

Imports wkd/core, the ports' protocols (wkd.engine.ports, wkd.hsm.base) and the shared base
modules; never a concrete disk or HSM module, D-Bus or ctypes (tests/unit/test_layers.py).
"""

from wkd.engine.facade import Engine

__all__ = ["Engine"]
