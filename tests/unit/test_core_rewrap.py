"""wkd.core.reconcile and wkd.core.rewrap: the token decisions and the rewrap step table,
driven directly with no I/O (as h11's tests drive its state machine)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.core_helpers import token
from wkd.core.reconcile import plan_reconcile, unlock_order
from wkd.core.rewrap import (
    TABLE,
    TERMINAL,
    Outcome,
    Phase,
    ProtocolError,
    RewrapProtocol,
    Step,
    plan_rewrap,
)
from wkd.model import TokenState

A, S = TokenState.ACTIVE, TokenState.STAGED

# --- reconciliation: the cases of docs/token-format.md -----------------------------------


@pytest.mark.parametrize(("tokens", "verified", "keep", "promote", "remove"), [
    # only old active
    ({0: token(1)}, {0: True}, 0, None, ()),
    # old active + new staged: roll back
    ({0: token(1), 1: token(2, S)}, {0: True, 1: True}, 0, None, (1,)),
    # old active + new active: roll forward
    ({0: token(1), 1: token(2)}, {0: True, 1: True}, 1, None, (0,)),
    # only a staged token verifies (old KEK gone): promote it
    ({0: token(1), 1: token(2, S)}, {0: False, 1: True}, 1, 1, (0,)),
    # nothing verifies: change nothing
    ({0: token(1), 1: token(2, S)}, {}, None, None, ()),
    # an active token of higher generation that cannot be checked is never removed
    ({0: token(1), 1: token(3)}, {0: True, 1: False}, 0, None, ()),
    # a staged token that does not verify goes once something verified is kept
    ({0: token(1), 1: token(2, S)}, {0: True, 1: False}, 0, None, (1,)),
])
def test_reconcile_cases(tokens, verified, keep, promote, remove):
    plan = plan_reconcile(tokens, verified)
    assert (plan.keep, plan.promote, plan.remove) == (keep, promote, remove)
    assert plan.changes == bool(promote is not None or remove)


def test_unlock_order_prefers_active_then_newest():
    tokens = {0: token(1), 1: token(3, S), 2: token(2), 3: token(4, S)}
    assert unlock_order(tokens) == [2, 0, 3, 1]


token_sets = st.dictionaries(
    st.integers(0, 31),
    st.tuples(st.integers(1, 6), st.sampled_from([A, S])).map(lambda g: token(g[0], g[1])),
    min_size=1, max_size=6)


@given(tokens=token_sets, data=st.data())
def test_reconcile_properties(tokens, data):
    verified = data.draw(st.dictionaries(st.sampled_from(sorted(tokens)), st.booleans()))
    plan = plan_reconcile(tokens, verified)
    ok = {t for t, v in verified.items() if v}
    if not ok:
        assert not plan.changes and plan.keep is None
        return
    # Something that opens the volume is kept, and it is never removed.
    assert plan.keep in ok and plan.keep not in plan.remove
    assert plan.promote in (None, plan.keep)
    kept = tokens[plan.keep]
    # Promotion only when no active token verified.
    assert (plan.promote is not None) == (not any(tokens[t].state is A for t in ok))
    for t in plan.remove:
        # Removed: a staged leftover, or superseded by the kept (verified) token.
        assert tokens[t].state is S or (tokens[t].generation, t) < (kept.generation, plan.keep)
    # Never deleted on a guess: an unverified active token of higher generation stays.
    for t, tok in tokens.items():
        if tok.state is A and (tok.generation, t) > (kept.generation, plan.keep):
            assert t not in plan.remove


# --- the rewrap step table ---------------------------------------------------------------


def _run(protocol: RewrapProtocol, outcomes: dict[Step, Outcome]) -> list[Step]:
    steps = []
    while (step := protocol.next_step()) is not None:
        steps.append(step)
        protocol.done(step, outcomes.get(step, Outcome.OK))
    return steps


def test_plan_rewrap_to_another_kek():
    start = plan_rewrap({0: token(1), 4: token(2)}, "kek-b", "0b")
    assert start.current_id == 4 and start.next_generation == 3
    assert start.retire == (0, 4) and not start.same_kek


def test_plan_rewrap_to_the_current_kek_proves_it():
    start = plan_rewrap({0: token(1, kek="kek-a", kek_id="0a")}, "kek-a", "0a")
    assert start.same_kek
    # The same label with another CKA_ID is another KEK (re-created): a real rewrap.
    assert not plan_rewrap({0: token(1)}, "kek-a", "0b").same_kek


def test_happy_path_walks_every_step_in_order():
    p = RewrapProtocol(plan_rewrap({0: token(1)}, "kek-b", "0b"))
    assert _run(p, {}) == [Step.WRAP_NEW, Step.STAGE, Step.VERIFY, Step.PROMOTE, Step.RETIRE]
    assert p.phase is Phase.DONE and p.changed and p.finished


def test_same_kek_proves_or_refuses():
    ok = RewrapProtocol(plan_rewrap({0: token(1)}, "kek-a", "0a"))
    assert _run(ok, {}) == [Step.PROVE_CURRENT] and ok.phase is Phase.PROVEN
    assert not ok.changed
    bad = RewrapProtocol(plan_rewrap({0: token(1)}, "kek-a", "0a"))
    _run(bad, {Step.PROVE_CURRENT: Outcome.FAILED})
    assert bad.phase is Phase.REFUSED


def test_failed_verify_unstages_and_refuses():
    p = RewrapProtocol(plan_rewrap({0: token(1)}, "kek-b", "0b"))
    steps = _run(p, {Step.VERIFY: Outcome.FAILED})
    assert steps == [Step.WRAP_NEW, Step.STAGE, Step.VERIFY, Step.UNSTAGE]
    assert p.phase is Phase.REFUSED and not p.changed


def test_illegal_transitions_raise():
    p = RewrapProtocol(plan_rewrap({0: token(1)}, "kek-b", "0b"))
    with pytest.raises(ProtocolError):
        p.done(Step.STAGE, Outcome.OK)  # WRAP_NEW comes first
    p.done(Step.WRAP_NEW, Outcome.OK)
    p.done(Step.STAGE, Outcome.OK)
    p.done(Step.VERIFY, Outcome.OK)
    with pytest.raises(ProtocolError):
        p.done(Step.PROMOTE, Outcome.FAILED)  # no such outcome: reconciliation's job
    p.done(Step.PROMOTE, Outcome.OK)
    p.done(Step.RETIRE, Outcome.OK)
    with pytest.raises(ProtocolError):
        p.done(Step.RETIRE, Outcome.OK)  # over


def _header_at(phase: Phase, outcomes: list[tuple[Step, Outcome]]) -> tuple[dict, dict]:
    """The tokens on disk (and which verify) after the steps taken: a model of the header
    the engine writes, to check the table against reconciliation."""
    old, new = token(1, kek="kek-a"), token(2, S, kek="kek-b", blob=1)
    tokens, verified = {0: old}, {0: True}
    new_ok = True
    for step, outcome in outcomes:
        if step is Step.STAGE and outcome is Outcome.OK:
            tokens[1] = new
            verified[1] = new_ok
        elif step is Step.VERIFY:
            new_ok = outcome is Outcome.OK
            verified[1] = new_ok
        elif step is Step.UNSTAGE and outcome is Outcome.OK:
            del tokens[1], verified[1]
        elif step is Step.PROMOTE:
            tokens[1] = new.with_state(A)
        elif step is Step.RETIRE:
            del tokens[0], verified[0]
    return tokens, verified


def _paths():
    """Every walk through the table from START, each outcome tried at every step."""
    out = []
    stack = [(Phase.START, [])]
    while stack:
        phase, taken = stack.pop()
        out.append((phase, taken))
        if phase in TERMINAL:
            continue
        step, moves = TABLE[phase]
        for outcome, nxt in moves.items():
            stack.append((nxt, [*taken, (step, outcome)]))
    return out


@pytest.mark.parametrize(("phase", "taken"), _paths(), ids=lambda v: str(v)[:40])
def test_a_crash_at_any_phase_reconciles_to_a_verified_token(phase, taken):
    """The crash-safety argument of the protocol, checked on the table itself: whatever
    step a kill interrupts, the header then holds a token that opens the volume, and
    reconciliation keeps exactly that one's generation or newer."""
    tokens, verified = _header_at(phase, taken)
    assert any(verified.get(t) for t in tokens), f"nothing opens the volume in {phase}"
    plan = plan_reconcile(tokens, verified)
    assert plan.keep is not None and verified[plan.keep]
    left = set(tokens) - set(plan.remove)
    assert left == {plan.keep}
    # Once the new token was promoted, reconciliation never goes back to the old one.
    if any(s is Step.PROMOTE for s, _ in taken):
        assert tokens[plan.keep].kek_label == "kek-b"


@given(st.lists(st.tuples(st.sampled_from(list(Step)), st.sampled_from(list(Outcome))),
                max_size=8))
def test_any_input_either_follows_the_table_or_raises(moves):
    p = RewrapProtocol(plan_rewrap({0: token(1)}, "kek-b", "0b"))
    for step, outcome in moves:
        before = p.phase
        expected = None if p.finished else TABLE[before]
        try:
            p.done(step, outcome)
        except ProtocolError:
            assert p.phase is before
            assert expected is None or expected[0] is not step or outcome not in expected[1]
            continue
        assert expected is not None and expected[0] is step
        assert p.phase is expected[1][outcome]


def test_every_phase_is_reachable_and_terminal_phases_have_no_step():
    reached = {phase for phase, _ in _paths()} | {Phase.PROVE, Phase.PROVEN}
    assert reached == set(Phase)
    assert all(phase not in TABLE for phase in TERMINAL)
    assert set(itertools.chain.from_iterable(m.values() for _, m in TABLE.values())) <= set(Phase)
