"""Rewrap, start-up reconciliation and RewrapAll: the engine side of the rewrap protocol.

The protocol's order is wkd/core/rewrap.py's table; this module performs each step the
table asks for and reports its outcome, so it cannot take the steps in another order.
Rewrap to the KEK a volume is already under proves the volume opens (unwrap + digest) before
it answers success, and fails with the typed error otherwise (issue 9.4).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from wkd import errors
from wkd.core.facts import Header
from wkd.core.reconcile import plan_reconcile
from wkd.core.rewrap import Outcome, Phase, RewrapProtocol, Step, plan_rewrap
from wkd.engine.context import Context
from wkd.engine.ports import TokenSession
from wkd.engine.views import Views
from wkd.log import MessageId, log_event
from wkd.model import (
    SYSTEM_CALLER,
    Caller,
    KekInfo,
    RewrapAllResult,
    TokenState,
    VolumeEventKind,
    VolumeInfo,
    WrappedKey,
)
from wkd.token import WkdToken, rewrapped
from wkd.values import DevicePath, KekLabel, VolumeRef, VolumeUuid

log = logging.getLogger("wkd.engine")


class _Run:
    """One rewrap in progress: the protocol, the open header, what the steps produced."""

    def __init__(self, protocol: RewrapProtocol, session: TokenSession, kek: KekInfo) -> None:
        self.protocol = protocol
        self.session = session
        self.kek = kek
        self.staged: WkdToken | None = None
        self.staged_id: int | None = None
        self.error: errors.WkdError | None = None


class Rewrapper:
    def __init__(self, ctx: Context, views: Views) -> None:
        self._ctx = ctx
        self._views = views

    async def rewrap(self, volume: VolumeRef, kek_label: KekLabel, *,
                     caller: Caller = SYSTEM_CALLER) -> VolumeInfo:
        ctx = self._ctx
        uuid = await self._views.uuid_of(volume)
        async with ctx.volume_lock(uuid):
            target = await self._views.target(volume)
            kek = await ctx.hsm.get_kek(kek_label)
            header = await self.reconcile(target.header)
            protocol = RewrapProtocol(plan_rewrap(header.tokens, kek.label, kek.key_id))
            await self._run(header, protocol, kek)
            info = await self._views.get_volume(DevicePath(header.path))
        changed = protocol.phase is Phase.DONE
        log_event(log, MessageId.VOLUME_REWRAPPED,
                  f"volume {uuid} is wrapped under KEK {kek.label}"
                  + ("" if changed else " (already was, and opens with it)"),
                  volume_uuid=uuid, operation="rewrap", result="ok" if changed else "noop",
                  caller_uid=caller.uid, caller_pid=caller.pid, kek=kek.label)
        if changed:
            ctx.emit(VolumeEventKind.CHANGED, uuid, info)
        return info

    async def _run(self, header: Header, protocol: RewrapProtocol, kek: KekInfo) -> None:
        ctx = self._ctx
        # One libcryptsetup context for the whole protocol.
        session = await ctx.io(ctx.disk.open_tokens, header.path)
        run = _Run(protocol, session, kek)
        try:
            while (step := protocol.next_step()) is not None:
                outcome = await self._step(run, step)
                protocol.done(step, outcome)
                ctx.checkpoint(protocol.phase.value)
        finally:
            await ctx.io(session.close)
        if protocol.phase is Phase.REFUSED:
            raise run.error or errors.Failed("the rewrap was refused")

    async def _step(self, run: _Run, step: Step) -> Outcome:
        """Perform one step of the table; a typed failure is an outcome, not an exception."""
        ctx, start = self._ctx, run.protocol.start
        try:
            if step is Step.PROVE_CURRENT:
                return await self._proves(run.session, start.current.wrapped(), "current")
            if step is Step.WRAP_NEW:
                wrapped = await ctx.hsm.rewrap(start.current.wrapped(), run.kek.label)
                run.staged = rewrapped(start.current, wrapped, start.next_generation)
            elif step is Step.STAGE:
                assert run.staged is not None
                ctx.checkpoint("before-stage")
                run.staged_id = await ctx.io(run.session.write_token, None, run.staged)
            elif step is Step.VERIFY:
                assert run.staged is not None
                return await self._proves(run.session, run.staged.wrapped(), "rewrapped")
            elif step is Step.UNSTAGE:
                assert run.staged_id is not None
                await ctx.io(run.session.remove_token, run.staged_id)
            elif step is Step.PROMOTE:
                assert run.staged is not None and run.staged_id is not None
                await ctx.io(run.session.write_token, run.staged_id,
                             run.staged.with_state(TokenState.ACTIVE))
            elif step is Step.RETIRE:
                for tid in start.retire:
                    await ctx.io(run.session.remove_token, tid)
                    ctx.checkpoint(f"removed-{tid}")
        except errors.WkdError as e:
            if step in (Step.PROMOTE, Step.RETIRE):
                raise  # two verified tokens remain; reconciliation finishes (core/rewrap.py)
            run.error = run.error or e
            return Outcome.FAILED
        return Outcome.OK

    async def _proves(self, session: TokenSession, wrapped: WrappedKey, what: str) -> Outcome:
        """Does `wrapped` unwrap (in the HSM) to the key the LUKS2 digest accepts? The HSM's
        refusal (UnwrapFailed, KekNotFound) is the step's failure, as it is Unlock's."""
        key = await self._ctx.hsm.unwrap(wrapped)
        with key:
            if await self._ctx.io(session.verify_key, key):
                return Outcome.OK
        raise errors.KeyMismatch(f"the {what} token does not unwrap to the volume's key; "
                                 "the volume is unchanged")

    async def _verifies(self, session: TokenSession, wrapped: WrappedKey) -> bool:
        try:
            key = await self._ctx.hsm.unwrap(wrapped)
        except (errors.KekNotFound, errors.UnwrapFailed):
            return False
        with key:
            return await self._ctx.io(session.verify_key, key)

    # --- reconciliation -----------------------------------------------------------------
    async def reconcile(self, header: Header) -> Header:
        """Bring a header left by an interrupted rewrap back to one active token."""
        if len(header.tokens) < 2 and all(t.state is TokenState.ACTIVE
                                          for t in header.tokens.values()):
            return header
        ctx = self._ctx
        session = await ctx.io(ctx.disk.open_tokens, header.path)
        try:
            verified = {tid: await self._verifies(session, tok.wrapped())
                        for tid, tok in header.tokens.items()}
            plan = plan_reconcile(header.tokens, verified)
            if not plan.changes:
                return header
            if plan.promote is not None:
                await ctx.io(session.write_token, plan.promote,
                             header.tokens[plan.promote].with_state(TokenState.ACTIVE))
            for tid in plan.remove:
                await ctx.io(session.remove_token, tid)
        finally:
            await ctx.io(session.close)
        log_event(log, MessageId.RECONCILED,
                  f"volume {header.uuid}: finished an interrupted rewrap (kept token {plan.keep},"
                  f" removed {len(plan.remove)})", volume_uuid=header.uuid,
                  operation="reconcile", result="ok")
        probe = await ctx.io(ctx.disk.probe, header.path)
        if probe.read.header is None:
            raise errors.VolumeDamaged(probe.read.damaged or "the header went away")
        return probe.read.header

    async def reconcile_all(self) -> None:
        """At start-up: reconcile every known volume that is present and healthy."""
        ctx = self._ctx
        for uuid in sorted(ctx.registry.keys() | ctx.present.keys()):
            try:
                async with ctx.volume_lock(uuid):
                    target = await self._views.target(uuid)
                    await self.reconcile(target.header)
            except errors.VolumeNotFound:
                continue  # not here now; reconciled when it is next used
            except errors.WkdError as e:
                log.warning("reconcile of %s skipped: %s", uuid, e)

    # --- RewrapAll ----------------------------------------------------------------------
    async def rewrap_all(self, from_kek: KekLabel, to_kek: KekLabel, *,
                         caller: Caller = SYSTEM_CALLER,
                         on_progress: Callable[[int, int, str], None] | None = None
                         ) -> RewrapAllResult:
        await self._ctx.hsm.get_kek(to_kek)
        todo: list[VolumeUuid] = []
        skipped = 0
        for info in await self._views.list_volumes():
            if info.kek_label == to_kek:
                skipped += 1  # already done: this is what makes a restarted job resume
            elif info.kek_label == from_kek:
                todo.append(VolumeUuid(info.uuid))
        failed: list[tuple[str, str]] = []
        done = 0
        for uuid in todo:
            try:
                await self.rewrap(uuid, to_kek, caller=caller)
            except errors.WkdError as e:
                failed.append((uuid, e.dbus_name))
                log_event(log, MessageId.OPERATION_FAILED, f"rewrap of {uuid} failed: {e}",
                          volume_uuid=uuid, operation="rewrap", result=e.dbus_name,
                          level=logging.WARNING)
            done += 1
            if on_progress is not None:
                on_progress(done, len(todo), uuid)
        return RewrapAllResult(total=len(todo) + skipped, rewrapped=done - len(failed),
                               skipped=skipped, failed=tuple(failed))

