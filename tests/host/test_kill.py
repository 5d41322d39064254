"""Kill test: a rewrap in a child process is SIGKILLed at every step boundary and at random
instants; after every kill the volume must still open with its own key, unwrapped by the HSM.

Trials alternate the target KEK so each one does real work. After each kill the parent checks,
before any repair, that some token opens the volume and yields the original key; the next
child's start-up reconciliation then repairs the header, which the parent checks too.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.host import engine_helpers as h
from wkd import errors, luks2
from wkd.model import FormatOptions, UnlockOptions
from wkd.token import TOKEN_TYPE, parse_token

_skip = h.need_tools()
pytestmark = [pytest.mark.skipif(_skip is not None, reason=_skip or ""), pytest.mark.slow]

STEPS = ["before-stage", "staged", "verified", "activated", "removed"]
STEP_TRIALS_EACH = 8  # 40 step-boundary kills
RANDOM_TRIALS = 60  # and 60 at random instants: 100 in all
ROOT = Path(__file__).resolve().parents[2]


def _spawn(state_dir: Path, image: Path, kek: str, step: str | None) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "tests.host.kill_child", str(state_dir), str(image), kek]
    if step:
        argv.append(step)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "READY", f"child did not start: {line!r}"
    return proc


async def _opens_with_original_key(engine, image: Path, key: bytes) -> list[str]:
    """States of the tokens present; asserts at least one opens with the original key."""
    with luks2.Luks2Device.open(str(image)) as dev:
        tokens = [parse_token(dev.token_json_get(t)) for t, ty in dev.token_list().items()
                  if ty == TOKEN_TYPE]
    opened = 0
    for tok in tokens:
        try:
            k = await engine._hsm.unwrap(tok.wrapped())
        except (errors.UnwrapFailed, errors.KekNotFound):
            continue
        with k:
            if k.reveal_for_test() == key:
                opened += 1
    assert opened >= 1, f"no token opens the volume (tokens: {[t.state for t in tokens]})"
    # And the daemon's own unlock path (unwrap + LUKS2 digest check) agrees.
    await engine.unlock(str(image), UnlockOptions(verify_only=True))
    return [t.state.value for t in tokens]


async def test_rewrap_survives_sigkill_anywhere(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    image = h.make_image(tmp_path / "vol.img")
    engine = h.new_engine(state_dir)
    await engine.start()
    try:
        for label in ("kek-a", "kek-b"):
            with contextlib.suppress(errors.KekExists):
                await engine.create_kek(label)
        info = await engine.format(str(image), "kek-a", FormatOptions())
        key = await h.clear_key(engine, image)

        # Calibrate: how long does one rewrap take in the child?
        proc = _spawn(state_dir, image, "kek-b", None)
        out, _ = proc.communicate("go\n", timeout=60)
        duration = float(out.split()[-1])
        target = "kek-a"

        rng = random.Random(0x77D)
        plan = [s for s in STEPS for _ in range(STEP_TRIALS_EACH)] + [None] * RANDOM_TRIALS
        rng.shuffle(plan)
        seen_states: set[tuple[str, ...]] = set()
        killed = 0
        for step in plan:
            proc = _spawn(state_dir, image, target, step)
            # The child reconciled at start-up: one active token is all that is left.
            assert len(h.wkd_tokens(image)) == 1
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            if step is None:
                time.sleep(rng.uniform(0, duration * 1.5))
                proc.send_signal(signal.SIGKILL)
            rc = proc.wait(timeout=60)
            if rc == -signal.SIGKILL:
                killed += 1
            states = await _opens_with_original_key(engine, image, key)
            seen_states.add(tuple(sorted(states)))
            target = "kek-b" if target == "kek-a" else "kek-a"
            if rc != -signal.SIGKILL:
                continue
            # A killed rewrap may or may not have switched KEK; aim at the other one next.
            current = (await engine.get_volume(info.uuid)).kek_label
            target = "kek-b" if current == "kek-a" else "kek-a"

        assert len(plan) >= 100
        # Step kills always die; random ones mostly do (some land after the rewrap finished).
        assert killed >= len(STEPS) * STEP_TRIALS_EACH
        # The kills really did land in intermediate states, not only before or after.
        assert any(len(s) > 1 for s in seen_states), f"only saw {seen_states}"
        await engine.start()  # a restart reconciles whatever the last kill left
        assert len(h.wkd_tokens(image)) == 1
        assert await h.clear_key(engine, image) == key
    finally:
        await engine.stop()
