"""wkdctl against the real service."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.bus.conftest import REPO
from wkd.disk import luks2


def wkdctl(address: str, *args: str, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "wkd.cli", "--address", address, *args],
                          capture_output=True, text=True, timeout=120, cwd=str(REPO),
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


def test_wkdctl_commands(wkd_daemon, image, tmp_path):
    a = wkd_daemon.address
    r = wkdctl(a, "kek", "create", "cli-kek")
    assert r.returncode == 0, r.stderr
    r = wkdctl(a, "--json", "kek", "list")
    assert "cli-kek" in {k["label"] for k in json.loads(r.stdout)}
    r = wkdctl(a, "--json", "format", image, "--label", "cli")
    assert r.returncode == 0, r.stderr
    uuid = json.loads(r.stdout)["Uuid"]
    r = wkdctl(a, "unlock", uuid, "--verify-only")
    assert r.returncode == 0 and "verified" in r.stdout, r.stderr
    r = wkdctl(a, "unlock", uuid)
    if not luks2.device_mapper_available():
        assert r.returncode == 4, r
        assert r.stderr.startswith("wkdctl: ") and "Traceback" not in r.stderr
    r = wkdctl(a, "rewrap", uuid, "cli-kek")
    assert r.returncode == 0, r.stderr
    r = wkdctl(a, "status")
    assert r.returncode == 0 and uuid in r.stdout and "SOFTWARE token" in r.stdout
    header, *rows = r.stdout.splitlines()[1:]
    assert header.split()[-1] == "CONDITION"
    assert any(uuid in row and row.split()[-1] == "ok" for row in rows), r.stdout
    r = wkdctl(a, "--json", "list")
    vols = json.loads(r.stdout)["volumes"]
    assert any(v["Uuid"] == uuid and v["Kek"] == "cli-kek" and v["Condition"] == "ok"
               for v in vols)
    r = wkdctl(a, "rewrap-all", "cli-kek", "wkd-default", env={"WKDCTL_PROGRESS": "1"})
    assert r.returncode == 0, r.stderr
    assert "completed" in r.stdout and "[" in r.stderr  # the progress bar
    r = wkdctl(a, "lock", uuid)
    assert "Traceback" not in r.stderr


def test_wkdctl_errors_and_exit_codes(wkd_daemon):
    a = wkd_daemon.address
    r = wkdctl(a, "unlock", "/dev/does-not-exist")
    assert r.returncode == 3 and r.stderr.startswith("wkdctl: "), r
    r = wkdctl(a, "unlock", "x", "--name", "../x")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r
    r = wkdctl(a, "kek", "create", "wkd-default")
    assert r.returncode == 4, r
    r = wkdctl("unix:path=/nonexistent/bus", "status")
    assert r.returncode == 1 and r.stderr.startswith("wkdctl: cannot connect"), r
