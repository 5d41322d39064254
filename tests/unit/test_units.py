"""units/: static checks of wkd.service hardening, systemd-analyze verify/security, tmpfiles."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "units"
MAX_EXPOSURE = 2.0  # systemd-analyze security, offline; docs/boot.md records the value


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """systemd unit file syntax as far as these files use it (repeated keys kept)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections.setdefault(current, [])
            continue
        assert current is not None, f"assignment outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit, section, key) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"{key}= expected once in [{section}], found {found}"
    return found[0]


@pytest.fixture(scope="module")
def service():
    return parse_unit(UNITS / "wkd.service")


def test_service_type_watchdog_and_bus(service):
    assert one(service, "Service", "Type") == "notify"
    assert one(service, "Service", "NotifyAccess") == "main"
    assert one(service, "Service", "WatchdogSec") == "30"
    assert one(service, "Service", "Restart") == "on-failure"
    # wkd exits with EX_CONFIG on a configuration error (wkd/system/daemon.py): no restart.
    from wkd.system.daemon import EX_CONFIG

    assert one(service, "Service", "RestartPreventExitStatus") == str(EX_CONFIG) == "78"
    assert one(service, "Service", "BusName") == "org.wkd1"
    assert one(service, "Service", "ExecStart") == "/usr/bin/wkd --state-dir /var/lib/wkd"
    assert one(service, "Service", "StateDirectory") == "wkd"
    assert one(service, "Service", "StateDirectoryMode") == "0700"
    assert one(service, "Service", "UMask") == "0077"
    # Credential by name: optional (credstore lookup), never a hard-coded absolute path.
    assert one(service, "Service", "LoadCredential") == "wkd-pin"


def test_dbus_activation_file_names_this_service():
    activation = ROOT / "dbus" / "org.wkd1.service"
    if not activation.exists():
        pytest.skip("dbus/org.wkd1.service not written yet (D-Bus helper's file)")
    assert "SystemdService=wkd.service" in activation.read_text()


@pytest.mark.parametrize(("key", "expected"), [
    ("CapabilityBoundingSet", "CAP_SYS_ADMIN"),
    ("AmbientCapabilities", ""),
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateMounts", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictAddressFamilies", "AF_UNIX AF_NETLINK"),
    ("IPAddressDeny", "any"),
    ("DevicePolicy", "closed"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("SystemCallArchitectures", "native"),
    ("KeyringMode", "private"),
    ("LimitMEMLOCK", "64M"),
    ("LimitNOFILE", "1024"),
])
def test_hardening_directive(service, key, expected):
    assert one(service, "Service", key) == expected


def test_syscall_filter_and_devices(service):
    assert values(service, "Service", "SystemCallFilter") == [
        "@system-service", "~@privileged @resources"]
    assert sorted(values(service, "Service", "DeviceAllow")) == [
        "/dev/mapper/control rw", "block-* rw"]
    assert values(service, "Service", "ReadWritePaths") == ["-/run/cryptsetup"]


def test_deliberately_absent_settings(service):
    """Each of these would break the daemon; docs/boot.md says why. Keep them out."""
    keys = {k for k, _ in service["Service"]}
    # udev netlink events do not cross network namespaces
    assert "PrivateNetwork" not in keys
    # ctypes callbacks need a W+X libffi closure page
    assert "MemoryDenyWriteExecute" not in keys
    # disks must stay visible; libdevmapper's udev semaphore must be shared
    assert "PrivateDevices" not in keys and "PrivateIPC" not in keys


def _verify_copy(tmp_path: Path) -> Path:
    # verify checks ExecStart= is executable: point it at /bin/true in a copy.
    text = (UNITS / "wkd.service").read_text().replace("/usr/bin/wkd", "/bin/true")
    copy = tmp_path / "wkd.service"
    copy.write_text(text)
    return copy


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    copy = _verify_copy(tmp_path)
    result = subprocess.run([tool, "verify", "--man=no", str(copy)], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_systemd_analyze_security_exposure(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    copy = _verify_copy(tmp_path)
    result = subprocess.run([tool, "security", "--offline=yes", str(copy)],
                            capture_output=True, text=True, cwd=tmp_path)
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("systemd-analyze too old for security --offline (needs 250+)")
    match = re.search(r"Overall exposure level for wkd\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_tmpfiles_creates_private_directories(tmp_path):
    tool = shutil.which("systemd-tmpfiles")
    if tool is None:
        pytest.skip("systemd-tmpfiles not installed")
    subprocess.run([tool, f"--root={tmp_path}", "--create", str(UNITS / "wkd.tmpfiles")],
                   check=True, capture_output=True)
    for rel in ("run/cryptsetup", "var/lib/wkd"):
        st = os.stat(tmp_path / rel)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700, rel


def test_modules_load_snippet():
    lines = [ln for ln in (UNITS / "wkd-modules.conf").read_text().splitlines()
             if ln and not ln.startswith("#")]
    assert lines == ["dm_crypt"]


def test_generator_script_runs(tmp_path):
    script = UNITS / "wkd-generator"
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/python3\n")
    table = tmp_path / "wkdtab"
    table.write_text("data /dev/sdb nofail\n")
    env = {**os.environ, "WKDTAB": str(table), "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "e"),
                    str(tmp_path / "l")], check=True, env=env)
    assert (out / "wkd-unlock@data.service").is_file()
    assert (out / "cryptsetup.target.wants" / "wkd-unlock@data.service").is_symlink()
