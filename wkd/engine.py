"""Format, Unlock, Lock and Rewrap orchestration. No D-Bus here: adapters call this.

The engine owns three rules:
  * one operation per volume at a time (a per-UUID asyncio lock; Format locks the device path);
  * nothing on disk changes when an operation fails (checks first, header restored on a failed
    Format, tokens written in the crash-safe order of docs/token-format.md);
  * the clear volume key exists only in a `SecretKey`, for the shortest span, and is wiped.

libcryptsetup calls block, so they run in worker threads (`asyncio.to_thread`); each thread gets
its own `Luks2Device`. HSM calls are coroutines of the backend, which serialises them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable

from wkd import devices, errors, luks2
from wkd.config import Config
from wkd.headers import Header, HeaderCache
from wkd.hsm.base import HsmBackend, ensure_kek
from wkd.log import MessageId, log_event
from wkd.model import (
    SYSTEM_CALLER,
    Caller,
    FormatOptions,
    HsmInfo,
    HsmState,
    KekInfo,
    LockOptions,
    Mapping,
    RewrapAllResult,
    TokenState,
    UnlockOptions,
    VolumeEvent,
    VolumeEventKind,
    VolumeInfo,
    WrappedKey,
)
from wkd.names import default_mapping_name, validate_kek_label, validate_mapping_name, validate_uuid
from wkd.registry import Registry
from wkd.secret import SecretKey
from wkd.token import TOKEN_TYPE, WkdToken, new_token, parse_token, render_token
from wkd.tokenstate import plan_reconcile, unlock_order
from wkd.values import KeySize

log = logging.getLogger("wkd.engine")

SUPPORTED_CIPHERS = {"aes-xts-plain64": ("aes", "xts-plain64")}
# LUKS2 places data at 16 MiB by default; Format saves and, on failure, restores this much of
# the device so a refused or failed Format leaves the disk byte-for-byte as it was.
_FORMAT_UNDO_BYTES = 16 * 1024 * 1024 + 4096

Checkpoint = Callable[[str], None]


class Engine:
    def __init__(self, hsm: HsmBackend, config: Config, *,
                 checkpoint: Checkpoint | None = None) -> None:
        self._hsm = hsm
        self._config = config
        self._registry = Registry(config.daemon.state_dir)
        self._headers = HeaderCache()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._subscribers: list[Callable[[VolumeEvent], None]] = []
        self._hsm_state = HsmState.UNAVAILABLE
        # Tests of crash safety set this to kill the process at named step boundaries.
        self._checkpoint: Checkpoint = checkpoint or (lambda _step: None)

    # --- life cycle ---------------------------------------------------------------------
    async def start(self, *, discover: bool = True) -> None:
        """Open the HSM; then (discover=True, the daemon) make sure the default KEK exists,
        find wkd volumes and finish interrupted rewraps. Boot-time `wkd attach` passes
        discover=False: it must not create keys, and reads only the header it unlocks."""
        await self._hsm.open()
        self._hsm_state = HsmState.READY
        if not discover:
            return
        kek, created = await ensure_kek(self._hsm, self._config.hsm.default_kek)
        if created:
            log_event(log, MessageId.KEK_CREATED, f"created default KEK {kek.label}",
                      operation="create-kek", result="ok", kek_label=kek.label)
        await self.scan()
        for uuid in list(self._registry.devices()):
            try:
                async with self._volume_lock(uuid):
                    await self._reconcile(await self._resolve(uuid))
            except errors.WkdError as e:
                log.warning("reconcile of %s skipped: %s", uuid, e)

    async def stop(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._registry.flush()
        await self._hsm.close()
        self._hsm_state = HsmState.UNAVAILABLE

    @property
    def hsm_state(self) -> HsmState:
        return self._hsm_state

    @property
    def config(self) -> Config:
        return self._config

    async def hsm_info(self) -> HsmInfo:
        return await self._hsm.info()

    def _remember(self, uuid: str, path: str) -> None:
        """Note where a volume is. Registry writes are coalesced: registering 1000 volumes one
        by one would otherwise rewrite the whole file 1000 times (the registry is a cache of
        what a scan finds, so losing the last second of it in a crash costs a rescan)."""
        if not self._registry.put(uuid, path, flush=False):
            return
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(1.0, self._flush_registry)

    def _flush_registry(self) -> None:
        self._flush_handle = None
        try:
            self._registry.flush()
        except OSError as e:
            log.warning("could not save the volume registry: %s", e)

    def subscribe(self, callback: Callable[[VolumeEvent], None]) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def _emit(self, kind: VolumeEventKind, uuid: str, info: VolumeInfo | None) -> None:
        event = VolumeEvent(kind, uuid, info)
        for cb in list(self._subscribers):
            try:
                cb(event)
            except Exception:
                log.exception("volume event subscriber failed")

    # --- KEKs ----------------------------------------------------------------------------
    async def create_kek(self, label: str, *, caller: Caller = SYSTEM_CALLER) -> KekInfo:
        validate_kek_label(label)
        kek = await self._hsm.create_kek(label)
        log_event(log, MessageId.KEK_CREATED, f"created KEK {label}", operation="create-kek",
                  result="ok", caller_uid=caller.uid, caller_pid=caller.pid, kek_label=label)
        return kek

    async def list_keks(self) -> list[KekInfo]:
        return await self._hsm.list_keks()

    # --- discovery -----------------------------------------------------------------------
    async def scan(self) -> list[str]:
        """Find LUKS2 block devices carrying a wkd token; remember them. Returns their UUIDs."""
        found = await asyncio.to_thread(_scan_block_devices, self._headers)
        for uuid, path in found.items():
            known = self._registry.get(uuid)
            self._remember(uuid, path)
            if known is None:
                self._emit(VolumeEventKind.ADDED, uuid, await self._info_or_none(uuid))
        return sorted(found)

    async def add_device(self, path: str) -> VolumeInfo | None:
        """Called on hot-plug: register `path` if it is a wkd volume."""
        try:
            header = await asyncio.to_thread(self._headers.read, path)
        except errors.WkdError:
            return None
        if not header.tokens:
            return None
        known = self._registry.get(header.uuid)
        self._registry.put(header.uuid, path)
        info = self._info(header)
        self._emit(VolumeEventKind.CHANGED if known else VolumeEventKind.ADDED, header.uuid, info)
        return info

    async def remove_device(self, uuid: str) -> None:
        """Called when a disk disappears: forget where it was and tell subscribers."""
        if self._registry.get(uuid) is not None:
            self._registry.forget(uuid)
            self._emit(VolumeEventKind.REMOVED, uuid, None)

    async def list_volumes(self) -> list[VolumeInfo]:
        # One worker-thread hop for all headers and one scan of the dm devices for all
        # volumes: per-volume hops and scans made this O(N) thread switches and O(N x maps).
        headers = await asyncio.to_thread(self._read_known, self._registry.devices())
        dms = devices.dm_devices()
        return [self._info(h, dms) for h in headers]

    def _read_known(self, known: dict[str, str]) -> list[Header]:
        out: list[Header] = []
        for uuid, path in sorted(known.items()):
            try:
                header = self._headers.read(path)
            except errors.WkdError as e:
                log.debug("volume %s not readable now: %s", uuid, e)
                continue
            if header.uuid == uuid and header.tokens:
                out.append(header)
        return out

    async def get_volume(self, volume: str) -> VolumeInfo:
        header = await self._resolve(volume)
        return self._info(header)

    async def _info_or_none(self, uuid: str) -> VolumeInfo | None:
        try:
            return await self.get_volume(uuid)
        except errors.WkdError as e:
            log.debug("volume %s not readable now: %s", uuid, e)
            return None

    async def _resolve(self, volume: str) -> Header:
        """A device path or LUKS UUID -> the volume's header, checked to be a wkd volume."""
        if volume.startswith("/"):
            facts = devices.inspect(volume, allow_files=self._config.daemon.allow_image_files)
            header = await asyncio.to_thread(self._headers.read, facts.path)
        else:
            try:
                uuid = validate_uuid(volume)
            except errors.InvalidArgument:
                raise errors.InvalidArgument(
                    "a volume is named by a device path or a LUKS UUID") from None
            path = self._registry.get(uuid) or _by_uuid_link(uuid)
            if path is None:
                raise errors.VolumeNotFound(f"no known volume has UUID {uuid}")
            try:
                header = await asyncio.to_thread(self._headers.read, path)
            except (errors.DeviceNotFound, errors.NotAWkdVolume):
                raise errors.VolumeNotFound(f"volume {uuid} is not present (last seen at "
                                            f"{path})") from None
            if header.uuid != uuid:
                raise errors.VolumeNotFound(f"volume {uuid} is not present ({path} now holds "
                                            "another volume)")
        if not header.tokens:
            raise errors.NotAWkdVolume(f"{header.path} is LUKS2 but has no usable wkd token")
        self._remember(header.uuid, header.path)
        return header

    def _info(self, header: Header, dms: list[devices.DmDevice] | None = None) -> VolumeInfo:
        best = header.tokens[unlock_order(header.tokens)[0]]
        dm = devices.find_mapping_device(header.uuid, dms)
        mapping = None
        if dm is not None:
            mapping = Mapping(name=dm.name, device=f"/dev/mapper/{dm.name}",
                              read_only=devices.read_only(dm))
        return VolumeInfo(uuid=header.uuid, device=header.path, kek_label=best.kek_label,
                          kek_id=best.kek_id, cipher=header.cipher,
                          # The size comes from the token: a header without keyslots does not
                          # record it (libcryptsetup reports 0 after crypt_load).
                          key_bits=best.key_bytes * 8,
                          auto_unlock=best.auto_unlock, created=best.created, mapping=mapping,
                          label=header.label)

    @contextlib.asynccontextmanager
    async def _volume_lock(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            yield

    # --- Format --------------------------------------------------------------------------
    async def format(self, device: str, kek_label: str | None, options: FormatOptions,
                     *, caller: Caller = SYSTEM_CALLER) -> VolumeInfo:
        kek_label = validate_kek_label(kek_label or self._config.hsm.default_kek)
        key_size = options.key_size or KeySize.from_bits(self._config.volumes.key_bits)
        if options.label is not None and (len(options.label) > 47 or "\0" in options.label):
            raise errors.InvalidArgument("a LUKS2 label is at most 47 bytes")
        facts = devices.inspect(device, allow_files=self._config.daemon.allow_image_files)
        async with self._volume_lock("dev:" + facts.path):
            await asyncio.to_thread(_check_formattable, facts, options.force)
            kek = await self._hsm.get_kek(kek_label)  # KekNotFound before anything is written
            wrapped = await self._hsm.generate_wrapped_key(kek.label, key_size.key_bytes)
            token = new_token(wrapped, cipher=self._config.volumes.cipher,
                              auto_unlock=options.auto_unlock, generation=1)
            key = await self._hsm.unwrap(wrapped)
            with key:
                uuid = await asyncio.to_thread(self._format_sync, facts, key, token, options)
        self._registry.put(uuid, facts.path)
        info = await self.get_volume(uuid)
        log_event(log, MessageId.VOLUME_FORMATTED, f"formatted {facts.path} as wkd volume {uuid}",
                  volume_uuid=uuid, operation="format", result="ok", caller_uid=caller.uid,
                  caller_pid=caller.pid, device=facts.path, kek_label=kek.label)
        self._emit(VolumeEventKind.ADDED, uuid, info)
        return info

    def _format_sync(self, facts: devices.DeviceFacts, key: SecretKey, token: WkdToken,
                     options: FormatOptions) -> str:
        cipher, mode = SUPPORTED_CIPHERS[self._config.volumes.cipher]
        undo = _save_region(facts.path, min(facts.size, _FORMAT_UNDO_BYTES))
        try:
            with luks2.Luks2Device.format(facts.path, key, cipher=cipher, cipher_mode=mode,
                                          label=options.label) as dev:
                dev.token_json_set(None, render_token(token))
                if options.recovery_passphrase:
                    vols = self._config.volumes
                    dev.add_passphrase_keyslot(key, options.recovery_passphrase,
                                               pbkdf=vols.recovery_pbkdf,
                                               time_ms=vols.recovery_pbkdf_ms)
                uuid = dev.uuid
            # Verify from a fresh read: the token parses and its key matches the digest.
            with luks2.Luks2Device.open(facts.path) as dev:
                tokens = [parse_token(dev.token_json_get(t))
                          for t, ty in dev.token_list().items() if ty == TOKEN_TYPE]
                if len(tokens) != 1 or tokens[0].wrapped_key != token.wrapped_key:
                    raise errors.Failed("the written token did not read back")
                if not dev.verify_volume_key(key):
                    raise errors.KeyMismatch("the new header does not accept the volume key")
            return uuid
        except BaseException:
            _restore_region(facts.path, undo)
            raise
        finally:
            if options.recovery_passphrase is not None:
                options.recovery_passphrase.wipe()

    # --- Unlock --------------------------------------------------------------------------
    async def unlock(self, volume: str, options: UnlockOptions,
                     *, caller: Caller = SYSTEM_CALLER) -> VolumeInfo:
        if options.name is not None:
            validate_mapping_name(options.name)
        header = await self._resolve(volume)
        async with self._volume_lock(header.uuid):
            header = await asyncio.to_thread(self._headers.read, header.path)
            existing = devices.find_mapping(header.uuid)
            if existing is not None and not options.verify_only:
                # Idempotent: an unlocked volume is reported, not opened twice.
                return self._info(header)
            name = options.name or default_mapping_name(header.uuid)
            if not options.verify_only:
                if not luks2.device_mapper_available():
                    raise errors.DeviceMapperUnavailable(
                        "this kernel has no device-mapper (/dev/mapper/control is missing); "
                        "use the verify-only option to check the volume opens")
                if devices.dm_name_exists(name):
                    raise errors.MappingNameInUse(f"a device-mapper device named {name} "
                                                  "already exists")
            await self._open_with_tokens(header, name, options)
            info = self._info(header)
        op = "verify" if options.verify_only else "unlock"
        log_event(log, MessageId.VOLUME_UNLOCKED,
                  f"{'verified' if options.verify_only else 'unlocked'} volume {header.uuid}"
                  + ("" if options.verify_only else f" as {name}"),
                  volume_uuid=header.uuid, operation=op, result="ok", caller_uid=caller.uid,
                  caller_pid=caller.pid, device=header.path)
        if not options.verify_only:
            self._emit(VolumeEventKind.CHANGED, header.uuid, info)
        return info

    async def _open_with_tokens(self, header: Header, name: str,
                                options: UnlockOptions) -> None:
        last: errors.WkdError | None = None
        for tid in unlock_order(header.tokens):
            token = header.tokens[tid]
            try:
                key = await self._hsm.unwrap(token.wrapped())
            except (errors.KekNotFound, errors.UnwrapFailed) as e:
                log.info("volume %s: token %d does not open: %s", header.uuid, tid, e)
                last = e
                continue
            with key:
                ok = await asyncio.to_thread(self._activate_sync, header.path, name, key, options)
            if ok:
                return
            last = errors.KeyMismatch(f"token {tid} unwraps to a key the volume does not accept")
        if last is None:
            raise errors.NotAWkdVolume(f"{header.path} has no usable wkd token")
        raise last

    @staticmethod
    def _activate_sync(path: str, name: str, key: SecretKey, options: UnlockOptions) -> bool:
        with luks2.Luks2Device.open(path) as dev:
            if not dev.verify_volume_key(key):
                return False
            if not options.verify_only:
                dev.activate(name, key, read_only=options.read_only,
                             allow_discards=options.allow_discards)
            return True

    # --- Lock ----------------------------------------------------------------------------
    async def lock(self, volume: str, options: LockOptions,
                   *, caller: Caller = SYSTEM_CALLER) -> VolumeInfo:
        header = await self._resolve(volume)
        async with self._volume_lock(header.uuid):
            name = devices.find_mapping(header.uuid)
            if name is None:
                raise errors.NotUnlocked(f"volume {header.uuid} is not unlocked")
            await asyncio.to_thread(luks2.deactivate, name, deferred=options.deferred)
            info = self._info(header)
        log_event(log, MessageId.VOLUME_LOCKED, f"locked volume {header.uuid} ({name})",
                  volume_uuid=header.uuid, operation="lock", result="ok", caller_uid=caller.uid,
                  caller_pid=caller.pid, device=header.path)
        self._emit(VolumeEventKind.CHANGED, header.uuid, info)
        return info

    # --- Rewrap --------------------------------------------------------------------------
    async def rewrap(self, volume: str, new_kek_label: str,
                     *, caller: Caller = SYSTEM_CALLER) -> VolumeInfo:
        validate_kek_label(new_kek_label)
        header = await self._resolve(volume)
        async with self._volume_lock(header.uuid):
            changed = await self._rewrap_locked(header.path, new_kek_label)
            info = self._info(await asyncio.to_thread(self._headers.read, header.path))
        log_event(log, MessageId.VOLUME_REWRAPPED,
                  f"volume {header.uuid} is wrapped under KEK {new_kek_label}"
                  + ("" if changed else " (already was)"),
                  volume_uuid=header.uuid, operation="rewrap", result="ok" if changed else "noop",
                  caller_uid=caller.uid, caller_pid=caller.pid, kek_label=new_kek_label)
        if changed:
            self._emit(VolumeEventKind.CHANGED, header.uuid, info)
        return info

    async def _rewrap_locked(self, path: str, new_kek_label: str) -> bool:
        """The crash-safe protocol of docs/token-format.md. Returns False when already done."""
        new_kek = await self._hsm.get_kek(new_kek_label)
        header = await self._reconcile(await asyncio.to_thread(self._headers.read, path))
        current_id = unlock_order(header.tokens)[0]
        current = header.tokens[current_id]
        if current.kek_label == new_kek.label and current.kek_id == new_kek.key_id:
            return False
        wrapped = await self._hsm.rewrap(current.wrapped(), new_kek.label)
        staged = WkdToken(
            version=current.version, backend=current.backend, kek_label=wrapped.kek_label,
            kek_id=wrapped.kek_id, mechanism=wrapped.mechanism, wrapped_key=wrapped.blob,
            key_bytes=wrapped.key_bytes, cipher=current.cipher, state=TokenState.STAGED,
            created=current.created, auto_unlock=current.auto_unlock,
            generation=max(t.generation for t in header.tokens.values()) + 1)
        # One libcryptsetup context for the whole protocol: each token write updates its
        # in-memory header too, so nothing needs loading again between the steps.
        dev = await asyncio.to_thread(luks2.Luks2Device.open, path)
        try:
            self._checkpoint("before-stage")
            staged_id = await asyncio.to_thread(dev.token_json_set, None, render_token(staged))
            self._checkpoint("staged")
            if not await self._verify_with(dev, staged.wrapped()):
                await asyncio.to_thread(dev.token_remove, staged_id)
                raise errors.KeyMismatch("the rewrapped key does not match the volume digest; "
                                         "the volume is unchanged")
            self._checkpoint("verified")
            await asyncio.to_thread(dev.token_json_set, staged_id,
                                    render_token(staged.with_state(TokenState.ACTIVE)))
            self._checkpoint("activated")
            for tid, tok in header.tokens.items():
                if tok.generation < staged.generation:
                    await asyncio.to_thread(dev.token_remove, tid)
                    self._checkpoint(f"removed-{tid}")
        finally:
            dev.close()
        return True

    async def _verify_with(self, dev: luks2.Luks2Device, wrapped: WrappedKey) -> bool:
        """Does this wrapped key unwrap (in the HSM) to the key the LUKS2 digest accepts?"""
        try:
            key = await self._hsm.unwrap(wrapped)
        except (errors.KekNotFound, errors.UnwrapFailed):
            return False
        with key:
            return await asyncio.to_thread(dev.verify_volume_key, key)

    async def _reconcile(self, header: Header) -> Header:
        """Bring a header left by an interrupted rewrap back to one active token."""
        if len(header.tokens) < 2 and all(t.state is TokenState.ACTIVE
                                          for t in header.tokens.values()):
            return header
        dev = await asyncio.to_thread(luks2.Luks2Device.open, header.path)
        try:
            verified = {tid: await self._verify_with(dev, tok.wrapped())
                        for tid, tok in header.tokens.items()}
            plan = plan_reconcile(header.tokens, verified)
            if not plan.changes:
                return header
            if plan.promote is not None:
                promoted = header.tokens[plan.promote].with_state(TokenState.ACTIVE)
                await asyncio.to_thread(dev.token_json_set, plan.promote,
                                        render_token(promoted))
            for tid in plan.remove:
                await asyncio.to_thread(dev.token_remove, tid)
        finally:
            dev.close()
        log_event(log, MessageId.RECONCILED,
                  f"volume {header.uuid}: finished an interrupted rewrap (kept token {plan.keep},"
                  f" removed {len(plan.remove)})", volume_uuid=header.uuid,
                  operation="reconcile", result="ok")
        return await asyncio.to_thread(self._headers.read, header.path)

    async def rewrap_all(self, from_kek: str, to_kek: str, *, caller: Caller = SYSTEM_CALLER,
                         on_progress: Callable[[int, int, str], None] | None = None
                         ) -> RewrapAllResult:
        validate_kek_label(from_kek)
        validate_kek_label(to_kek)
        await self._hsm.get_kek(to_kek)
        todo: list[str] = []
        skipped = 0
        for info in await self.list_volumes():
            if info.kek_label == to_kek:
                skipped += 1  # already done: this is what makes a restarted job resume
            elif info.kek_label == from_kek:
                todo.append(info.uuid)
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


# --- blocking helpers (run in worker threads) -------------------------------------------
def _check_formattable(facts: devices.DeviceFacts, force: bool) -> None:
    if devices.holders(facts) or devices.mounted(facts) or devices.swap_in_use(facts):
        raise errors.DeviceInUse(f"{facts.path} is in use (mapped, mounted or swap); "
                                 "wkd will not format it, even with force")
    if facts.size < 32 * 1024 * 1024:
        raise errors.InvalidArgument(f"{facts.path} is too small for LUKS2 (at least 32 MiB)")
    found = devices.signatures(facts)
    if found and not force:
        raise errors.DeviceHasSignature(
            f"{facts.path} carries data ({', '.join(sorted(set(found)))}); "
            "pass the force option to overwrite it")


def _save_region(path: str, length: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(length)


def _restore_region(path: str, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        log.exception("could not restore the start of %s after a failed format", path)


def _scan_block_devices(headers: HeaderCache) -> dict[str, str]:
    found: dict[str, str] = {}
    for node in devices.block_devices():
        if not devices.has_luks_magic(node):
            continue
        try:
            # Through the cache: start-up reconciliation and listing read these again.
            header = headers.read(node)
        except errors.WkdError:
            continue
        if header.tokens:
            found[header.uuid] = node
    return found


def _by_uuid_link(uuid: str) -> str | None:
    link = f"/dev/disk/by-uuid/{uuid}"
    return os.path.realpath(link) if os.path.exists(link) else None
