"""Format, and the recovery of a Format a crash interrupted (docs/design.md, "Format").

The decisions are wkd/core/format.py's; the crash-atomic writing is wkd/disk/formatter.py's.
Here: the order of the steps, the HSM calls, the journal entries, the events.
"""

from __future__ import annotations

import logging
import uuid as uuidlib

from wkd import errors
from wkd.core import format as plan
from wkd.core.facts import FormatIntent, FormatRequest, Header
from wkd.engine.context import Context
from wkd.engine.views import Views
from wkd.log import MessageId, log_event
from wkd.model import SYSTEM_CALLER, Caller, FormatOptions, VolumeEventKind, VolumeInfo
from wkd.token import new_token
from wkd.values import DevicePath, KekLabel, KeySize, VolumeUuid

log = logging.getLogger("wkd.engine")


class Formatter:
    def __init__(self, ctx: Context, views: Views) -> None:
        self._ctx = ctx
        self._views = views

    async def format(self, device: DevicePath, kek: KekLabel | None, options: FormatOptions,
                     *, caller: Caller = SYSTEM_CALLER) -> VolumeInfo:
        try:
            return await self._format(device, kek, options, caller)
        finally:
            if options.recovery_passphrase is not None:
                options.recovery_passphrase.wipe()

    async def _format(self, device: DevicePath, kek_label: KekLabel | None,
                      options: FormatOptions, caller: Caller) -> VolumeInfo:
        ctx = self._ctx
        vols = ctx.config.volumes
        label = kek_label or KekLabel(ctx.config.hsm.default_kek)
        key_size = options.key_size or KeySize.from_bits(vols.key_bits)
        facts = await ctx.io(ctx.disk.format_facts, device)
        async with ctx.volume_lock("dev:" + facts.device.path):
            facts = await ctx.io(ctx.disk.format_facts, device)  # again, under the lock
            plan.check_formattable(facts, options.force)
            kek = await ctx.hsm.get_kek(label)  # KekNotFound before anything is written
            wrapped = await ctx.hsm.generate_wrapped_key(kek.label, key_size.key_bytes)
            token = new_token(wrapped, cipher=vols.cipher, auto_unlock=options.auto_unlock)
            request = FormatRequest(
                device=facts.device, uuid=VolumeUuid(str(uuidlib.uuid4())), token=token,
                cipher=vols.cipher, label=options.label, recovery_pbkdf=vols.recovery_pbkdf,
                recovery_pbkdf_ms=vols.recovery_pbkdf_ms)
            key = await ctx.hsm.unwrap(wrapped)
            with key:
                header = await ctx.io(ctx.disk.format, request, key,
                                      options.recovery_passphrase, ctx.checkpoint)
        info = await self._formatted(header)
        log_event(log, MessageId.VOLUME_FORMATTED,
                  f"formatted {facts.device.path} as wkd volume {header.uuid}",
                  volume_uuid=header.uuid, operation="format", result="ok",
                  caller_uid=caller.uid, caller_pid=caller.pid, device=facts.device.path,
                  kek=kek.label)
        return info

    async def _formatted(self, header: Header) -> VolumeInfo:
        """Bookkeeping after a volume is on disk: a failure here no longer undoes it."""
        ctx = self._ctx
        ctx.saw(header.uuid, header.path, True)
        ctx.record(header.uuid, header.path)
        info = await self._views.get_volume(header.uuid)
        ctx.emit(VolumeEventKind.ADDED, header.uuid, info)
        return info

    # --- recovery -----------------------------------------------------------------------
    async def recover(self) -> None:
        """Finish or roll back every Format a crash interrupted, saying so in the journal."""
        ctx = self._ctx
        for intent in await ctx.io(ctx.disk.format_intents):
            try:
                async with ctx.volume_lock("dev:" + intent.device):
                    await self._recover_one(intent)
            except errors.WkdError as e:
                log_event(log, MessageId.OPERATION_FAILED,
                          f"an interrupted Format of {intent.device} could not be recovered "
                          f"now: {e}", volume_uuid=intent.uuid, operation="format-recovery",
                          result=e.dbus_name, device=intent.device, level=logging.WARNING)

    async def _recover_one(self, intent: FormatIntent) -> None:
        ctx = self._ctx
        seen = await ctx.io(ctx.disk.observe_format, intent)
        decision = plan.plan_recovery(intent, seen)
        if decision.action is plan.Recovery.WAIT:
            log.info("%s", decision.reason)
            return
        if decision.action is plan.Recovery.REDO:
            await self._redo(intent)
        elif decision.action is plan.Recovery.ROLL_BACK:
            await ctx.io(ctx.disk.roll_back_format, intent)
        else:
            await ctx.io(ctx.disk.remove_format_intent, intent.uuid)
        log_event(log, MessageId.FORMAT_RECOVERED, decision.reason, volume_uuid=intent.uuid,
                  operation="format-recovery", result=decision.action.value,
                  device=intent.device)
        if decision.action in (plan.Recovery.COMPLETE, plan.Recovery.REDO):
            ctx.saw(intent.uuid, intent.device, True)
            ctx.record(intent.uuid, intent.device)

    async def _redo(self, intent: FormatIntent) -> None:
        """Write the interrupted Format's header again, from its intent (same UUID, same
        wrapped key: the HSM unwraps it to the key the new digest is made from)."""
        ctx = self._ctx
        facts = await ctx.io(ctx.disk.format_facts, intent.device)
        request = FormatRequest(device=facts.device, uuid=intent.uuid, token=intent.token,
                                cipher=intent.token.cipher, label=intent.label)
        key = await ctx.hsm.unwrap(intent.token.wrapped())
        with key:
            await ctx.io(ctx.disk.format, request, key, None, ctx.checkpoint)
