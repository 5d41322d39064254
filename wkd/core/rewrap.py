r"""The rewrap protocol as an explicit state machine (docs/token-format.md, "Rewrap protocol").

Written the way h11 writes its connection states: a table says, for each phase, which step
comes next and where each outcome of that step leads. `RewrapProtocol` holds the phase and
refuses any step or outcome the table does not allow (`ProtocolError`), so the engine that
executes the steps cannot reorder them: the crash-safety argument of the protocol (at every
instant some token opens the volume) is a property of this table, and the unit tests walk it
without any I/O.

    PROVE    --prove-current--> PROVEN            (target is the current KEK: prove it opens)
                           \--> REFUSED
    START    --wrap-new-----> WRAPPED             (HSM: unwrap with A, wrap with B, inside)
                           \--> REFUSED
    WRAPPED  --stage--------> STAGED              (write T' staged, generation g+1)
                           \--> REFUSED           (nothing written)
    STAGED   --verify-------> VERIFIED            (T' unwraps to the key the digest accepts)
                           \--> UNSTAGING
    UNSTAGING --unstage-----> REFUSED             (T' removed; or left for reconciliation)
    VERIFIED --promote------> ACTIVE              (T' rewritten as active)
    ACTIVE   --retire-------> DONE                (every older token removed)

A failure in PROMOTE or RETIRE has no outcome in the table: the header then holds two
verified tokens and start-up reconciliation (wkd/core/reconcile.py) finishes the job, so the
engine lets the error propagate and the machine stays where it was.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from wkd.core.reconcile import unlock_order
from wkd.token import WkdToken


class Phase(enum.StrEnum):
    PROVE = "prove"
    START = "start"
    WRAPPED = "wrapped"
    STAGED = "staged"
    UNSTAGING = "unstaging"
    VERIFIED = "verified"
    ACTIVE = "activated"
    PROVEN = "proven"  # terminal: already under the target KEK, and it opens the volume
    DONE = "done"  # terminal: rewrapped
    REFUSED = "refused"  # terminal: nothing changed (or only a staged token reconciliation drops)


class Step(enum.StrEnum):
    PROVE_CURRENT = "prove-current"
    WRAP_NEW = "wrap-new"
    STAGE = "stage"
    VERIFY = "verify"
    UNSTAGE = "unstage"
    PROMOTE = "promote"
    RETIRE = "retire"


class Outcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"


TERMINAL: Final = frozenset({Phase.PROVEN, Phase.DONE, Phase.REFUSED})

# phase -> (the step to take, outcome -> next phase)
TABLE: Final[Mapping[Phase, tuple[Step, Mapping[Outcome, Phase]]]] = {
    Phase.PROVE: (Step.PROVE_CURRENT, {Outcome.OK: Phase.PROVEN,
                                       Outcome.FAILED: Phase.REFUSED}),
    Phase.START: (Step.WRAP_NEW, {Outcome.OK: Phase.WRAPPED, Outcome.FAILED: Phase.REFUSED}),
    Phase.WRAPPED: (Step.STAGE, {Outcome.OK: Phase.STAGED, Outcome.FAILED: Phase.REFUSED}),
    Phase.STAGED: (Step.VERIFY, {Outcome.OK: Phase.VERIFIED, Outcome.FAILED: Phase.UNSTAGING}),
    Phase.UNSTAGING: (Step.UNSTAGE, {Outcome.OK: Phase.REFUSED,
                                     Outcome.FAILED: Phase.REFUSED}),
    Phase.VERIFIED: (Step.PROMOTE, {Outcome.OK: Phase.ACTIVE}),
    Phase.ACTIVE: (Step.RETIRE, {Outcome.OK: Phase.DONE}),
}


class ProtocolError(Exception):
    """A step or outcome the table does not allow: a bug in the caller, never bad input."""


@dataclass(frozen=True, slots=True)
class RewrapStart:
    """Where a rewrap begins, decided from the header's tokens and the target KEK."""

    current_id: int  # the token that opens the volume now (first in unlock order)
    current: WkdToken
    next_generation: int  # for the staged token
    retire: tuple[int, ...]  # tokens the RETIRE step removes (all of lower generation)
    same_kek: bool  # already wrapped by the target KEK: PROVE instead of rewrapping


def plan_rewrap(tokens: Mapping[int, WkdToken], kek_label: str, kek_id: str) -> RewrapStart:
    """Decide the start of a rewrap of a volume whose (reconciled) tokens are `tokens`."""
    if not tokens:
        raise ValueError("a rewrap needs at least one wkd token")
    current_id = unlock_order(tokens)[0]
    current = tokens[current_id]
    top = max(t.generation for t in tokens.values())
    return RewrapStart(
        current_id=current_id, current=current, next_generation=top + 1,
        retire=tuple(sorted(tokens)),
        same_kek=current.kek_label == kek_label and current.kek_id == kek_id)


class RewrapProtocol:
    """The phase of one rewrap. Pure: the engine asks for `next_step()`, performs it and
    reports the outcome with `done()`; any other order raises `ProtocolError`."""

    def __init__(self, start: RewrapStart) -> None:
        self.start = start
        self.phase = Phase.PROVE if start.same_kek else Phase.START
        self.history: list[tuple[Phase, Step, Outcome]] = []

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL

    @property
    def changed(self) -> bool:
        """True once the header holds the new token as the active one."""
        return self.phase in (Phase.ACTIVE, Phase.DONE)

    def next_step(self) -> Step | None:
        if self.finished:
            return None
        return TABLE[self.phase][0]

    def done(self, step: Step, outcome: Outcome) -> Phase:
        if self.finished:
            raise ProtocolError(f"the rewrap is over ({self.phase}); no {step} now")
        expected, moves = TABLE[self.phase]
        if step is not expected:
            raise ProtocolError(f"in phase {self.phase} the step is {expected}, not {step}")
        if outcome not in moves:
            raise ProtocolError(f"{step} has no {outcome} outcome in phase {self.phase}: "
                                "reconciliation handles it")
        self.history.append((self.phase, step, outcome))
        self.phase = moves[outcome]
        return self.phase
