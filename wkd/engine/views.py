"""The one view of volumes: discovery, listing, and the device an operation acts on.

Every view and every operation goes through `survey` + wkd/core/volumes.py, so ListVolumes,
GetVolume, the Volume objects and the operations agree on which volumes exist and in what
condition (issue 9.5), and a device that newly carries a known UUID is a duplicate or a
journaled move, never a silent replacement (issue 10.2).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from wkd import errors
from wkd.core import volumes as core
from wkd.core.facts import DmState, Header, Probe, Survey
from wkd.engine.context import Context
from wkd.log import MessageId, log_event
from wkd.model import VolumeCondition, VolumeEventKind, VolumeInfo
from wkd.values import DevicePath, VolumeRef, VolumeUuid

log = logging.getLogger("wkd.engine")


@dataclass(frozen=True, slots=True)
class Target:
    """The device an operation acts on, as one survey saw it."""

    uuid: VolumeUuid
    probe: Probe
    header: Header
    dm: DmState
    assessment: core.Assessment


class Views:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._duplicates_reported: set[tuple[VolumeUuid, frozenset[str]]] = set()

    # --- looking -------------------------------------------------------------------------
    async def survey(self, paths: Iterable[str]) -> Survey:
        return await self._ctx.io(self._ctx.disk.survey, sorted(set(paths)))

    def _learn(self, uuid: VolumeUuid, survey: Survey) -> core.Assessment | None:
        """Fold a survey of `uuid`'s places into presence and the registry; assess it."""
        ctx = self._ctx
        for path in ctx.places(uuid):
            probe = survey.probes.get(path)
            ctx.saw(uuid, path, probe is not None and core.carries(probe, uuid))
        probes = [p for path in ctx.places(uuid) if (p := survey.probes.get(path)) is not None]
        assessment = core.assess(uuid, ctx.registry.get(uuid), probes)
        if assessment is not None:
            self._note(assessment)
        return assessment

    def _note(self, assessment: core.Assessment) -> None:
        """Registry and journal follow what the assessment found."""
        uuid, ctx = assessment.uuid, self._ctx
        paths = [p.device.path for p in assessment.carriers]
        recorded = ctx.registry.get(uuid)
        if assessment.condition is VolumeCondition.DUPLICATE:
            key = (uuid, frozenset(paths))
            if key not in self._duplicates_reported:
                self._duplicates_reported.add(key)
                log_event(log, MessageId.VOLUME_DUPLICATE,
                          f"volume {uuid}: {' and '.join(paths)} carry the same UUID; neither "
                          "is unlocked automatically and calls by UUID are refused until "
                          "one is named by its device path", volume_uuid=uuid,
                          operation="discover", result="duplicate", device=paths[0],
                          devices=" ".join(paths), level=logging.WARNING)
            return
        path = paths[0]
        if recorded is not None and recorded != path:
            log_event(log, MessageId.VOLUME_MOVED,
                      f"volume {uuid} is now on {path} (recorded on {recorded}, which no "
                      "longer carries it)", volume_uuid=uuid, operation="discover",
                      result="moved", device=path)
        ctx.record(uuid, path)

    async def assess(self, uuid: VolumeUuid) -> tuple[core.Assessment | None, Survey]:
        survey = await self.survey(self._ctx.places(uuid))
        return self._learn(uuid, survey), survey

    # --- what calls act on ------------------------------------------------------------
    async def uuid_of(self, ref: VolumeRef) -> VolumeUuid:
        """The volume UUID `ref` names (for the volume's lock); typed error if none."""
        if not isinstance(ref, DevicePath):
            return ref
        probe = await self._ctx.io(self._ctx.disk.probe, ref)
        uuid = probe.read.uuid
        if uuid is None or not core.carries(probe, uuid):
            core.choose(ref, None, probe)  # raises the precise error
            raise errors.NotAWkdVolume(f"{ref} is not a wkd volume")  # pragma: no cover
        return uuid

    async def target(self, ref: VolumeRef) -> Target:
        """The device an operation on `ref` acts on, freshly surveyed; or its typed error."""
        ctx = self._ctx
        named: Probe | None = None
        if isinstance(ref, DevicePath):
            named = await ctx.io(ctx.disk.probe, ref)
            uuid = named.read.uuid
            if uuid is None:
                core.choose(ref, None, named)  # raises NotAWkdVolume
                raise errors.NotAWkdVolume(f"{ref} is not a wkd volume")  # pragma: no cover
            ctx.saw(uuid, named.device.path, core.carries(named, uuid))
        else:
            uuid = ref
        assessment, survey = await self.assess(uuid)
        if named is not None:
            named = survey.probes.get(named.device.path, named)
        chosen = core.choose(ref, assessment, named)
        assert assessment is not None  # choose() raised otherwise
        return Target(uuid=uuid, probe=chosen, header=core.header_of(chosen), dm=survey.dm,
                      assessment=assessment)

    # --- listing ----------------------------------------------------------------------
    async def list_volumes(self) -> list[VolumeInfo]:
        places = self._ctx.all_places()
        survey = await self.survey(p for paths in places.values() for p in paths)
        out = []
        for uuid in sorted(places):
            assessment = self._learn(uuid, survey)
            if assessment is not None:
                out.append(core.volume_info(assessment, survey.dm))
        return out

    async def get_volume(self, ref: VolumeRef) -> VolumeInfo:
        """One volume as ListVolumes shows it (DAMAGED and DUPLICATE volumes included)."""
        ctx = self._ctx
        if isinstance(ref, DevicePath):
            probe = await ctx.io(ctx.disk.probe, ref)
            uuid = probe.read.uuid
            if uuid is None or not core.carries(probe, uuid):
                core.choose(ref, None, probe)
                raise errors.NotAWkdVolume(f"{ref} is not a wkd volume")
            ctx.saw(uuid, probe.device.path, True)
        else:
            uuid = ref
        assessment, survey = await self.assess(uuid)
        if assessment is None:
            raise errors.VolumeNotFound(f"no present device carries volume {uuid}")
        return core.volume_info(assessment, survey.dm)

    async def info_or_none(self, uuid: VolumeUuid) -> VolumeInfo | None:
        try:
            return await self.get_volume(uuid)
        except errors.WkdError as e:
            log.debug("volume %s not readable now: %s", uuid, e)
            return None

    # --- discovery and hot-plug -------------------------------------------------------
    async def scan(self) -> list[VolumeUuid]:
        """Find every wkd volume on the candidate devices; report new ones."""
        ctx = self._ctx
        probes = await ctx.io(ctx.disk.scan)
        visible = {u for u, seen in ctx.present.items() if seen}
        found: set[VolumeUuid] = set()
        for probe in probes:
            uuid = probe.read.uuid
            if uuid is not None and core.carries(probe, uuid):
                ctx.saw(uuid, probe.device.path, True)
                found.add(uuid)
        survey = await self.survey(p for u in found for p in ctx.places(u))
        for uuid in sorted(found):
            assessment = self._learn(uuid, survey)
            if assessment is not None and uuid not in visible:
                ctx.emit(VolumeEventKind.ADDED, uuid, core.volume_info(assessment, survey.dm))
        return sorted(found)

    async def device_added(self, path: DevicePath) -> VolumeInfo | None:
        """A device appeared (hot-plug): note it if it carries a wkd volume."""
        ctx = self._ctx
        try:
            probe = await ctx.io(ctx.disk.probe, path)
        except errors.WkdError:
            return None
        uuid = probe.read.uuid
        if uuid is None or not core.carries(probe, uuid):
            return None
        visible = bool(ctx.present.get(uuid))  # seen on some device before this one
        ctx.saw(uuid, probe.device.path, True)
        assessment, survey = await self.assess(uuid)
        if assessment is None:
            return None
        info = core.volume_info(assessment, survey.dm)
        ctx.emit(VolumeEventKind.CHANGED if visible else VolumeEventKind.ADDED, uuid, info)
        return info

    async def device_left(self, path: str) -> None:
        """A device is gone: drop it from presence and tell subscribers what that changed."""
        ctx = self._ctx
        touched = [u for u, seen in ctx.present.items() if path in seen]
        touched += [u for u, p in ctx.registry.items() if p == path and u not in touched]
        for uuid in touched:
            ctx.saw(uuid, path, False)
            info = await self.info_or_none(uuid)
            ctx.emit(VolumeEventKind.CHANGED if info else VolumeEventKind.REMOVED, uuid, info)
