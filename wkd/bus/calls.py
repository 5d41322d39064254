"""The operations behind the org.wkd1 methods: decode the arguments, call the backend, publish.

Manager and Volume objects share these (Volume.Unlock is Manager.Unlock of its own path).
Each runs inside wkd.bus.call.run_call, after the caller has been authorized: decoding
(wkd/bus/options.py), and reading a passed descriptor, happen only then.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbus_fast import Variant

from wkd.bus import options as opt
from wkd.bus.call import current_call, current_caller, read_secret_fd
from wkd.bus.jobs import JobObject, Jobs
from wkd.bus.ports import Backend
from wkd.bus.tree import ObjectTree
from wkd.errors import KekNotFound
from wkd.model import KekInfo, RewrapAllResult, VolumeInfo

Options = dict[str, Variant]


@dataclass(frozen=True, slots=True)
class Settings:
    """The adapter's share of the configuration."""

    # [daemon] allow_passphrase_in_message: accept Format's recovery-passphrase (ay).
    allow_passphrase_in_message: bool = False


class Calls:
    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self._tree: ObjectTree | None = None
        self._jobs: Jobs | None = None

    def attach(self, tree: ObjectTree, jobs: Jobs) -> None:
        self._tree, self._jobs = tree, jobs

    @property
    def tree(self) -> ObjectTree:
        assert self._tree is not None, "Calls used before attach()"
        return self._tree

    # --- KEKs -----------------------------------------------------------------------------
    async def create_kek(self, label: object, options: Options) -> KekInfo:
        kek = opt.kek_label(label)
        opt.no_options(options, "CreateKek")
        return await self.backend.create_kek(kek, caller=current_caller())

    async def list_keks(self, options: Options) -> list[KekInfo]:
        opt.no_options(options, "ListKeks")
        return await self.backend.list_keks()

    # --- volumes --------------------------------------------------------------------------
    async def list_volumes(self, options: Options) -> list[str]:
        opt.no_options(options, "ListVolumes")
        return [self.tree.publish(info) for info in await self.backend.list_volumes()]

    async def format(self, device: object, kek_label: object, options: Options) -> str:
        path = opt.device_path(device)
        kek = opt.optional_kek_label(kek_label)
        decoded = opt.format_options(
            options, read_secret_fd,
            allow_passphrase_in_message=self.settings.allow_passphrase_in_message)
        # The descriptor has been read: close it now, not when the long Format ends.
        current_call().close_fds()
        try:
            info = await self.backend.format(path, kek, decoded, caller=current_caller())
        finally:
            if decoded.recovery_passphrase is not None:
                decoded.recovery_passphrase.wipe()  # the backend wipes it too; twice is fine
        return self.tree.publish(info)

    async def unlock(self, volume: object, options: Options) -> VolumeInfo:
        ref = opt.volume_ref(volume)
        decoded = opt.unlock_options(options)
        info = await self.backend.unlock(ref, decoded, caller=current_caller())
        self.tree.publish(info)
        return info

    async def lock(self, volume: object, options: Options) -> VolumeInfo:
        ref = opt.volume_ref(volume)
        decoded = opt.lock_options(options)
        info = await self.backend.lock(ref, decoded, caller=current_caller())
        self.tree.publish(info)
        return info

    async def rewrap(self, volume: object, new_kek: object, options: Options) -> VolumeInfo:
        ref = opt.volume_ref(volume)
        kek = opt.kek_label(new_kek, "new KEK label")
        opt.no_options(options, "Rewrap")
        info = await self.backend.rewrap(ref, kek, caller=current_caller())
        self.tree.publish(info)
        return info

    async def rewrap_all(self, from_kek: object, to_kek: object, options: Options) -> str:
        src = opt.kek_label(from_kek, "source KEK label")
        dst = opt.kek_label(to_kek, "target KEK label")
        opt.no_options(options, "RewrapAll")
        caller = current_caller()
        # Refuse an unknown target before creating a job, so the mistake is a typed error on
        # the call itself (the source may be gone already when resuming a rotation).
        if dst not in {k.label for k in await self.backend.list_keks()}:
            raise KekNotFound(f"no KEK labelled {dst!r} in the HSM")
        assert self._jobs is not None

        async def work(job: JobObject) -> RewrapAllResult:
            return await self.backend.rewrap_all(
                src, dst, caller=caller,
                on_progress=lambda d, t, c: self.tree.on_progress(job, d, t, c))

        return self._jobs.start("rewrap-all", caller.uid, work).path

