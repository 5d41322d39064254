"""Format decisions: may this device be formatted, and what an interrupted Format left.

Format writes in an order that makes a kill at any instant safe (docs/design.md, "Format is
crash-atomic"): it records a `FormatIntent` in the state directory first, builds the whole
LUKS2 header (token and recovery keyslot included) off the device, then writes it with the
two binary headers last, so the device is either as it was, partly overwritten with no
loadable header, or a complete wkd volume. `plan_recovery` maps what the next start finds to
the action that finishes or rolls back, and says which in the journal.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from wkd import errors
from wkd.core.facts import FormatFacts, FormatIntent, FormatObservation

# LUKS2 needs room for two 16 KiB headers, the keyslot area (16 MiB data offset by default)
# and some data; cryptsetup refuses smaller devices too.
MIN_DEVICE_BYTES: Final = 32 * 1024 * 1024


def check_formattable(facts: FormatFacts, force: bool) -> None:
    """Raise the typed error that refuses Format, or return when it may write.

    In use (mounted, held, swap, opened exclusively: on the device or any partition of it)
    is refused even with force; force overrides data signatures only."""
    path = facts.device.path
    if facts.in_use:
        raise errors.DeviceInUse(f"{path} is in use ({'; '.join(facts.in_use)}); wkd will "
                                 "not format it, even with force")
    if facts.device.size < MIN_DEVICE_BYTES:
        raise errors.InvalidArgument(f"{path} is too small for LUKS2 (at least 32 MiB)")
    if facts.signatures and not force:
        raise errors.DeviceHasSignature(
            f"{path} carries data ({', '.join(sorted(set(facts.signatures)))}); "
            "pass the force option to overwrite it")


class Recovery(enum.StrEnum):
    WAIT = "wait"  # the device is absent or busy: keep the intent, look again next time
    FORGET = "forget"  # nothing of ours to finish (as it was, or someone else's now)
    COMPLETE = "complete"  # the volume is whole: only the bookkeeping was missing
    REDO = "redo"  # partly overwritten, no header: write the header again (finish)
    ROLL_BACK = "roll-back"  # partly overwritten, cannot be finished: erase what we wrote


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    action: Recovery
    reason: str  # for the journal: what was found and what is done about it


def plan_recovery(intent: FormatIntent, seen: FormatObservation) -> RecoveryPlan:
    """What to do about a Format that did not finish, given what is on its device now."""
    dev = intent.device
    if not seen.present:
        return RecoveryPlan(Recovery.WAIT, f"{dev} is not present; the interrupted Format "
                            "is looked at again when it is")
    if seen.region_digest == intent.before:
        return RecoveryPlan(Recovery.FORGET, f"Format of {dev} was interrupted before it "
                            "wrote anything: the device is as it was (rolled back)")
    read = seen.read
    header = read.header if read is not None else None
    if header is not None:
        if header.uuid != intent.uuid:
            return RecoveryPlan(Recovery.FORGET, f"{dev} now holds another volume "
                                f"({header.uuid}); the interrupted Format is dropped")
        if any(t.wrapped_key == intent.token.wrapped_key for t in header.tokens.values()):
            return RecoveryPlan(Recovery.COMPLETE, f"Format of {dev} had written the whole "
                                f"volume {intent.uuid}; only its bookkeeping is finished now")
        return RecoveryPlan(Recovery.FORGET, f"{dev} holds volume {intent.uuid} without the "
                            "token Format wrote (changed since); left as it is")
    if seen.foreign_signatures:
        return RecoveryPlan(Recovery.FORGET, f"{dev} was changed by someone else since the "
                            f"interrupted Format ({', '.join(seen.foreign_signatures)}); "
                            "left as it is")
    if seen.in_use:
        return RecoveryPlan(Recovery.WAIT, f"{dev} is in use ({'; '.join(seen.in_use)}); "
                            "the interrupted Format is looked at again later")
    if intent.recovery:
        return RecoveryPlan(Recovery.ROLL_BACK, f"Format of {dev} was interrupted while "
                            "writing and asked for a recovery passphrase, which is never "
                            "stored: the partly written header area is erased (rolled back; "
                            f"the first {intent.region} bytes of the device are zero)")
    return RecoveryPlan(Recovery.REDO, f"Format of {dev} was interrupted while writing: the "
                        f"header of volume {intent.uuid} is written again (finished)")
