"""Kill tests: Rewrap and Format in a child process are SIGKILLed at every step boundary and
at random instants, and what is left must be safe.

Rewrap (100 kills): after every kill the volume still opens with its own key, unwrapped by
the HSM, before any repair; the next child's start-up reconciliation repairs the header,
which is checked too. Trials alternate the target KEK so each one does real work.

Format (at least 400 kills, issue 9.6): after every kill and the recovery a restarted daemon
runs, the device is byte-for-byte as it was or a complete wkd volume, never a LUKS2 header
without a wkd token, and no Format record is left pending.

The children are forked by tests/host/kill_server.py, which has imported wkd once.
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
from wkd import errors
from wkd.disk import luks2
from wkd.log import MessageId, record_fields
from wkd.model import FormatOptions, UnlockOptions
from wkd.token import TOKEN_TYPE, parse_token
from wkd.values import DevicePath, KekLabel, VolumeUuid

_skip = h.need_tools()
pytestmark = [pytest.mark.skipif(_skip is not None, reason=_skip or ""), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
REWRAP_STEPS = ["before-stage", "staged", "verified", "activated", "removed"]
REWRAP_STEP_TRIALS_EACH = 8  # 40 step-boundary kills
REWRAP_RANDOM_TRIALS = 60  # and 60 at random instants: 100 in all
FORMAT_STEPS = ["journaled", "body-written", "secondary-written", "primary-written"]
FORMAT_STEP_KILLS_EACH = 25  # 100 kills at the write steps
FORMAT_KILLS = int(os.environ.get("WKD_FORMAT_KILLS", "400"))  # in all, the rest at random instants


class KillServer:
    def __init__(self, state_dir: Path, image: Path) -> None:
        argv = [sys.executable, "-m", "tests.host.kill_server", str(state_dir), str(image)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
        assert self._line() == "SERVER"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the kill server died"
        return line.strip()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def start(self, *words: str) -> int:
        """Fork an operation; returns its pid once its engine is up."""
        self.send(" ".join(("go", *words)))
        pid, ready = 0, False
        while not (pid and ready):
            word, _, rest = self._line().partition(" ")
            if word == "PID":
                pid = int(rest)
            elif word == "READY":
                ready = True
            else:
                raise AssertionError(f"the child failed to start: {word} {rest}")
        return pid

    def wait(self) -> tuple[int, float | None]:
        """The child's wait status and, if it finished, how long the operation took."""
        took = None
        while True:
            word, _, rest = self._line().partition(" ")
            if word == "EXIT":
                return int(rest), took
            assert word == "DONE", f"{word} {rest}"
            took = float(rest)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("quit")
        self.proc.wait(timeout=60)


def killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


# --- Rewrap ------------------------------------------------------------------------------

async def _opens_with_original_key(engine, image: Path, key: bytes) -> list[str]:
    """States of the tokens present; asserts at least one opens with the original key."""
    with luks2.Luks2Device.open(str(image)) as dev:
        tokens = [parse_token(dev.token_json_get(t)) for t, ty in dev.token_list().items()
                  if ty == TOKEN_TYPE]
    opened = 0
    for tok in tokens:
        try:
            k = await engine._ctx.hsm.unwrap(tok.wrapped())
        except (errors.UnwrapFailed, errors.KekNotFound):
            continue
        with k:
            if k.reveal_for_test() == key:
                opened += 1
    assert opened >= 1, f"no token opens the volume (tokens: {[t.state for t in tokens]})"
    # And the daemon's own unlock path (unwrap + LUKS2 digest check) agrees.
    await engine.unlock(DevicePath(str(image)), UnlockOptions(verify_only=True))
    return [t.state.value for t in tokens]


async def test_rewrap_survives_sigkill_anywhere(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    image = h.make_image(tmp_path / "vol.img")
    engine = h.new_engine(state_dir)
    await engine.start()
    server = KillServer(state_dir, image)
    try:
        for label in ("kek-a", "kek-b"):
            with contextlib.suppress(errors.KekExists):
                await engine.create_kek(KekLabel(label))
        info = await engine.format(DevicePath(str(image)), KekLabel("kek-a"), FormatOptions())
        key = await h.clear_key(engine, image)

        # Calibrate: how long does one rewrap take in the child?
        server.start("rewrap", "kek-b", "-")
        server.send("proceed")
        status, duration = server.wait()
        assert status == 0 and duration is not None
        target = "kek-a"

        rng = random.Random(0x77D)
        plan = ([s for s in REWRAP_STEPS for _ in range(REWRAP_STEP_TRIALS_EACH)]
                + [None] * REWRAP_RANDOM_TRIALS)
        rng.shuffle(plan)
        seen_states: set[tuple[str, ...]] = set()
        kills = 0
        for step in plan:
            pid = server.start("rewrap", target, step or "-")
            # The child reconciled at start-up: one active token is all that is left.
            assert len(h.wkd_tokens(image)) == 1
            server.send("proceed")
            if step is None:
                time.sleep(rng.uniform(0, duration * 1.5))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            status, _ = server.wait()
            kills += killed(status)
            states = await _opens_with_original_key(engine, image, key)
            seen_states.add(tuple(sorted(states)))
            # A killed rewrap may or may not have switched KEK; aim at the other one next.
            current = (await engine.get_volume(VolumeUuid(info.uuid))).kek_label
            target = "kek-b" if current == "kek-a" else "kek-a"

        assert len(plan) >= 100
        # Step kills always die; random ones mostly do (some land after the rewrap finished).
        assert kills >= len(REWRAP_STEPS) * REWRAP_STEP_TRIALS_EACH
        # The kills really did land in intermediate states, not only before or after.
        assert any(len(s) > 1 for s in seen_states), f"only saw {seen_states}"
        await engine.start()  # a restart reconciles whatever the last kill left
        assert len(h.wkd_tokens(image)) == 1
        assert await h.clear_key(engine, image) == key
    finally:
        server.close()
        await engine.stop()


# --- Format ------------------------------------------------------------------------------

async def _state_after_recovery(engine, image: Path, before: bytes) -> str:
    """What the next start makes of the device: "unchanged" or "volume"; anything else
    fails the test (an in-between state)."""
    await engine._formatter.recover()  # what a restarted daemon does first
    if h.header_bytes(image) == before:
        return "unchanged"
    tokens = h.wkd_tokens(image)  # raises if libcryptsetup refuses the header
    assert len(tokens) == 1, f"{len(tokens)} wkd tokens after recovery"
    (tok,) = tokens.values()
    assert tok["state"] == "active"
    # The daemon's own unlock path agrees: unwrap in the HSM + LUKS2 digest check.
    await engine.unlock(DevicePath(str(image)), UnlockOptions(verify_only=True))
    return "volume"


@pytest.mark.timeout(900)  # ~100 s alone; the machine is shared
async def test_format_survives_sigkill_anywhere(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    state_dir = tmp_path / "state"
    image = h.make_image(tmp_path / "fmt.img")
    with open(image, "r+b") as f:
        f.write(os.urandom(17 * 1024 * 1024))  # "as it was" must be recognisable
    engine = h.new_engine(state_dir)
    await engine.start()
    server = KillServer(state_dir, image)
    try:
        server.start("format", "-")  # calibrate: how long does one Format take?
        status, duration = server.wait()
        assert status == 0 and duration is not None
        rng = random.Random(0xF0A7)
        plan = [s for s in FORMAT_STEPS for _ in range(FORMAT_STEP_KILLS_EACH)]
        rng.shuffle(plan)
        outcomes: dict[str, int] = {}
        kills = trials = 0
        while kills < FORMAT_KILLS:
            trials += 1
            assert trials < 2 * FORMAT_KILLS, f"only {kills} kills in {trials} trials"
            step = plan.pop() if plan else None
            before = h.header_bytes(image)
            pid = server.start("format", step or "-")
            if step is None:
                time.sleep(rng.uniform(0, duration))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            status, _ = server.wait()
            if killed(status):
                kills += 1
            else:
                assert os.WEXITSTATUS(status) == 0, f"Format failed (status {status})"
            state = await _state_after_recovery(engine, image, before)
            outcomes[state] = outcomes.get(state, 0) + 1
            assert not list((state_dir / "formats").glob("*.json")), "a Format record stays"
        # The kills landed on both sides: before anything was written, and after.
        assert outcomes.get("unchanged", 0) > 0 and outcomes.get("volume", 0) > 0, outcomes
        # The journal said what recovery did, and every kind of recovery happened: "forget"
        # (killed before writing), "redo" (killed while writing), "complete" (killed after).
        actions: dict[str, int] = {}
        for record in caplog.records:
            fields = record_fields(record)
            if fields.get("MESSAGE_ID") == MessageId.FORMAT_RECOVERED.value:
                action = str(fields["WKD_RESULT"])
                actions[action] = actions.get(action, 0) + 1
        assert {"forget", "redo", "complete"} <= set(actions), actions
        assert "roll-back" not in actions, "no recovery passphrase: nothing to roll back"
        print(f"\nFormat kill test: {kills} kills in {trials} trials, outcomes {outcomes}, "
              f"recoveries {actions}")
    finally:
        server.close()
        await engine.stop()
