"""pytest face of the system-test tier: one VM run, one test per scenario.

Skipped unless WKD_SYSTEM_TESTS=1, because a run boots QEMU under software emulation for
several minutes (docs/system-tests.md).  .ci/run sets it in its own step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.system.run import REPO, discover

ENABLED = os.environ.get("WKD_SYSTEM_TESTS") == "1"
pytestmark = [
    pytest.mark.skipif(not ENABLED, reason="system tests boot a QEMU VM for ~5 min; "
                       "set WKD_SYSTEM_TESTS=1 to run them (docs/system-tests.md)"),
    pytest.mark.timeout(3600),
]
SPECS = discover()


@pytest.fixture(scope="module")
def tier_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("system") / "results.json"
    # Run with `pytest -s` so the runner's progress and summary stream to the CI log; each
    # scenario then also appears as a test below.
    proc = subprocess.run([sys.executable, "-m", "tests.system.run", "--json", str(out)],
                          cwd=REPO, check=False)
    if proc.returncode == 2 or not out.exists():
        pytest.fail(f"the system-test tier could not run (exit {proc.returncode}); "
                    "see its output above")
    return {r["name"]: r for r in json.loads(out.read_text())["results"]}


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_scenario(spec, tier_results: dict[str, dict]) -> None:
    result = tier_results.get(spec.name)
    assert result is not None, f"{spec.name} produced no result"
    failed = [f"{c['name']}: {c.get('detail', '')}" for c in result["checks"] if not c["ok"]]
    assert result["ok"] and not failed, "\n".join(failed)
