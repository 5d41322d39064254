"""Unlock, Lock, auto-unlock and the clean-up after a device left: everything that makes or
removes a dm-crypt mapping. Decisions: wkd/core/mapping.py.

Every mapping wkd makes is recorded (root-only, this boot) *before* it is activated, so a
crash between the two leaves a record without a mapping (harmless) rather than a mapping wkd
would not recognise as its own. Every removal, including the hot-unplug clean-up, goes
through here: the volume's lock, an event, a journal entry.
"""

from __future__ import annotations

import dataclasses
import logging

from wkd import errors
from wkd.core import mapping as plan
from wkd.core.facts import MappingRecord
from wkd.core.reconcile import unlock_order
from wkd.core.volumes import volume_info
from wkd.engine.context import Context
from wkd.engine.views import Target, Views
from wkd.log import MessageId, log_event
from wkd.model import (
    SYSTEM_CALLER,
    Caller,
    LockOptions,
    Mapping,
    UnlockOptions,
    VolumeCondition,
    VolumeEventKind,
    VolumeInfo,
)
from wkd.values import MappingName, VolumeRef

log = logging.getLogger("wkd.engine")


class Mapper:
    def __init__(self, ctx: Context, views: Views) -> None:
        self._ctx = ctx
        self._views = views

    # --- Unlock -------------------------------------------------------------------------
    async def unlock(self, volume: VolumeRef, options: UnlockOptions, *,
                     caller: Caller = SYSTEM_CALLER, automatic: bool = False) -> VolumeInfo:
        """Unlock (or with verify_only, prove the volume opens). `automatic` is hot-plug:
        no caller, so a volume whose UUID another present device carries is refused even
        when named by path (neither copy is unlocked automatically)."""
        uuid = await self._views.uuid_of(volume)
        async with self._ctx.volume_lock(uuid):
            target = await self._views.target(volume)
            if automatic and target.assessment.condition is VolumeCondition.DUPLICATE:
                raise errors.DuplicateVolume(target.assessment.detail)
            decided = plan.plan_unlock(target.uuid, target.probe.device, target.dm, options)
            info = volume_info(target.assessment, target.dm)
            if decided.existing is not None:
                return info  # idempotent: an unlocked volume is reported, not opened twice
            made = await self._open(target, decided.name, options)
        if made is not None:
            info = dataclasses.replace(info, mapping=made)
        device = target.probe.device.path
        if made is None:
            log_event(log, MessageId.VOLUME_UNLOCKED, f"verified volume {target.uuid}",
                      volume_uuid=target.uuid, operation="verify", result="ok",
                      caller_uid=caller.uid, caller_pid=caller.pid, device=device)
            return info
        log_event(log, MessageId.VOLUME_UNLOCKED,
                  f"unlocked volume {target.uuid} as {made.name}", volume_uuid=target.uuid,
                  operation="auto-unlock" if automatic else "unlock", result="ok",
                  caller_uid=caller.uid, caller_pid=caller.pid, device=device,
                  mapping=made.name)
        self._ctx.emit(VolumeEventKind.CHANGED, target.uuid, info)
        return info

    async def _open(self, target: Target, name: MappingName | None,
                    options: UnlockOptions) -> Mapping | None:
        """Unwrap each token in turn until one opens the volume; map it if `name` is set."""
        ctx = self._ctx
        record = None
        if name is not None:
            device = target.probe.device
            record = MappingRecord(name=name, uuid=target.uuid, device=device.path,
                                   backing_dev=device.rdev)
            await self._keep_record(record)
        last: errors.WkdError | None = None
        try:
            for tid in unlock_order(target.header.tokens):
                try:
                    key = await ctx.hsm.unwrap(target.header.tokens[tid].wrapped())
                except (errors.KekNotFound, errors.UnwrapFailed) as e:
                    log.info("volume %s: token %d does not open: %s", target.uuid, tid, e)
                    last = e
                    continue
                with key:
                    if name is None:
                        ok = await ctx.io(ctx.disk.verify_key, target.probe.device.path, key)
                        made = None
                    else:
                        made = await ctx.io(ctx.disk.activate, target.probe.device, name, key,
                                            read_only=options.read_only,
                                            allow_discards=options.allow_discards)
                        ok = made is not None
                if ok:
                    record = None  # keep it: the mapping exists
                    return made
                last = errors.KeyMismatch(f"token {tid} unwraps to a key the volume does "
                                          "not accept")
        finally:
            if record is not None:
                await self._drop_record(record.name)
        raise last or errors.NotAWkdVolume(f"{target.probe.device.path} has no usable token")

    async def _keep_record(self, record: MappingRecord) -> None:
        try:
            await self._ctx.io(self._ctx.disk.add_mapping_record, record)
        except errors.StateUnwritable as e:
            # Unlocking stays possible with a full state directory (boot must not fail for
            # it); without the record wkd will not call the mapping its own, so Lock needs
            # force and hot-unplug leaves it. Said plainly, once per unlock.
            log.warning("mapping %s of volume %s is made without wkd's record of it (%s): "
                        "Lock will need force", record.name, record.uuid, e)

    async def _drop_record(self, name: str) -> None:
        try:
            await self._ctx.io(self._ctx.disk.remove_mapping_record, name)
        except errors.StateUnwritable as e:
            log.warning("the record of mapping %s stays behind: %s", name, e)

    # --- Lock ---------------------------------------------------------------------------
    async def lock(self, volume: VolumeRef, options: LockOptions, *,
                   caller: Caller = SYSTEM_CALLER) -> VolumeInfo:
        ctx = self._ctx
        uuid = await self._views.uuid_of(volume)
        async with ctx.volume_lock(uuid):
            target = await self._views.target(volume)
            records = await ctx.io(ctx.disk.mapping_records)
            decided = plan.plan_lock(target.uuid, target.probe.device, target.dm, records,
                                     options)
            name = decided.mapping.name
            await ctx.io(ctx.disk.deactivate, name, deferred=options.deferred)
            await self._drop_record(name)
        info = dataclasses.replace(volume_info(target.assessment, target.dm), mapping=None)
        how = "" if decided.ours else " (not made by wkd; locked with force)"
        log_event(log, MessageId.VOLUME_LOCKED, f"locked volume {target.uuid} ({name}){how}",
                  volume_uuid=target.uuid, operation="lock",
                  result="ok" if decided.ours else "ok-forced", caller_uid=caller.uid,
                  caller_pid=caller.pid, device=target.probe.device.path, mapping=name)
        ctx.emit(VolumeEventKind.CHANGED, target.uuid, info)
        return info

    # --- a device left ------------------------------------------------------------------
    async def device_left(self, devnode: str, devnum: int) -> None:
        """Remove the mappings wkd made on the device that left (deferred: the kernel drops
        each when its last user closes it), then update the views."""
        ctx = self._ctx
        records = await ctx.io(ctx.disk.mapping_records)
        dm = await ctx.io(ctx.disk.dm_state)
        for removal in plan.plan_cleanup(devnode, devnum, dm, records):
            uuid = removal.record.uuid
            async with ctx.volume_lock(uuid):
                try:
                    await ctx.io(ctx.disk.deactivate, removal.mapping.name, deferred=True)
                except errors.WkdError as e:
                    log.warning("removing mapping %s of vanished device %s failed: %s",
                                removal.mapping.name, devnode, e)
                    continue
                await self._drop_record(removal.mapping.name)
            log_event(log, MessageId.VOLUME_LOCKED,
                      f"removed mapping {removal.mapping.name} of volume {uuid}: its device "
                      f"{devnode} left", volume_uuid=uuid, operation="cleanup", result="ok",
                      device=devnode, mapping=removal.mapping.name)
        await self._views.device_left(devnode)
