"""Pure decisions over a volume's wkd tokens: which to try first, and how to reconcile.

A rewrap (docs/token-format.md, "Rewrap protocol") leaves, at any instant, one of these header
states; `plan_reconcile` maps each to the actions that restore "exactly one active token":

  only old active                 -> nothing
  old active + new staged         -> remove the staged token (roll back; a rewrap is retried)
  old active + new active         -> remove the old one (roll forward: the new one verified)
  only new active                 -> nothing

The rule generalises: the highest-generation active token that verifies is kept, every staged
token and every lower-generation token is removed. A token that fails verification is removed
only when a *verified* token of higher generation exists; one that merely could not be checked
(its KEK absent from this HSM) is never deleted on a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wkd.model import TokenState
from wkd.token import WkdToken


@dataclass(frozen=True, slots=True)
class ReconcilePlan:
    keep: int | None  # token id that opens the volume after the plan, None if none verified
    promote: int | None  # a staged token to rewrite as active (no active token verified)
    remove: tuple[int, ...]

    @property
    def changes(self) -> bool:
        return self.promote is not None or bool(self.remove)


def unlock_order(tokens: Mapping[int, WkdToken]) -> list[int]:
    """Active tokens newest first, then staged ones newest first (a staged token is tried
    only when no active token opens the volume)."""

    def key(tid: int) -> tuple[int, int, int]:
        t = tokens[tid]
        return (0 if t.state is TokenState.ACTIVE else 1, -t.generation, tid)

    return sorted(tokens, key=key)


def plan_reconcile(tokens: Mapping[int, WkdToken], verified: Mapping[int, bool]) -> ReconcilePlan:
    """`verified[tid]` is True when the token's key unwrapped and matched the LUKS2 digest.
    Tokens missing from `verified` count as unverified."""
    ok_active = [t for t, tok in tokens.items()
                 if tok.state is TokenState.ACTIVE and verified.get(t, False)]
    ok_staged = [t for t, tok in tokens.items()
                 if tok.state is TokenState.STAGED and verified.get(t, False)]

    def gen(tid: int) -> tuple[int, int]:
        return (tokens[tid].generation, tid)

    if ok_active:
        keep = max(ok_active, key=gen)
        promote = None
    elif ok_staged:
        keep = max(ok_staged, key=gen)
        promote = keep
    else:
        return ReconcilePlan(keep=None, promote=None, remove=())
    keep_gen = gen(keep)
    remove = sorted(
        t for t, tok in tokens.items()
        # Once a verified token is kept, staged leftovers are debris of an interrupted rewrap
        # (a staged token is never the only thing that opens the volume unless promoted), and
        # anything of lower generation is superseded.
        if t != keep and (tok.state is TokenState.STAGED or gen(t) < keep_gen)
    )
    return ReconcilePlan(keep=keep, promote=promote, remove=tuple(remove))
