"""Run every wkd benchmark against its peer, interleaved, and print/write the results.

    .venv/bin/python -m bench.run [--quick] [--out bench/results/results.json] [--no-profile]

Needs root (LUKS2 headers), cryptsetup, pkcs11-tool (opensc), jq, dbus-daemon, SoftHSM2.
Images are sparse 32 MiB files on tmpfs (/dev/shm), so header I/O measures software, not a
disk. Each figure is a median over several runs with its spread; each comparison is a ratio
to a peer measured in the same run, run i of wkd next to run i of the peer (see bench/stats.py).
The full run takes ~8-12 minutes on 2 shared cores; --quick is a ~2 minute smoke version with
fewer runs and sizes. The VM-only unlock comparison (systemd-cryptsetup) is bench/vm_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbus_fast.aio import MessageBus

from bench import harness as h
from bench import vm_bench
from bench.profile import Sampler
from bench.stats import (
    Row,
    format_table,
    growth_exponent,
    percentile,
    row_to_json,
    speedup,
)

BENCH_DIR = Path(__file__).resolve().parent
PEER_REWRAP = BENCH_DIR / "peer_rewrap.sh"
KEK_A, KEK_B = "wkd-default", "bench-b"


@dataclass
class Plan:
    quick: bool
    reps: int  # runs of every cheap measurement
    slow_reps: int  # runs of argon2id luksFormat/open (seconds each)
    fast_reps: int  # runs of millisecond operations
    sizes: tuple[int, ...]  # RewrapAll fleet sizes
    peer_max_n: int  # largest N the rewrap peer runs at; above it, extrapolated
    bus_calls: int  # calls per run of a read benchmark
    unlock_calls: int  # calls per run of the concurrent Unlock benchmark
    soak_calls: int  # calls between the two RSS readings
    profile: bool

    @classmethod
    def make(cls, quick: bool, profile: bool) -> Plan:
        if quick:
            return cls(quick=True, reps=3, slow_reps=1, fast_reps=10, sizes=(10, 100),
                       peer_max_n=10, bus_calls=100, unlock_calls=100, soak_calls=2000,
                       profile=profile)
        return cls(quick=False, reps=5, slow_reps=5, fast_reps=20, sizes=(10, 100, 1000),
                   peer_max_n=100, bus_calls=300, unlock_calls=300, soak_calls=10_000,
                   profile=profile)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"  {row.bench}: {row.subject}: median {percentile(row.samples, 50):.4g} "
              f"{row.unit} (n={len(row.samples)})", flush=True)
        return row


def say(text: str) -> None:
    print(text, flush=True)


def with_ratios(row: Row, peers: list[Row]) -> Row:
    ratios = {p.subject: speedup(row.samples, p.samples, higher_is_better=row.higher_is_better)
              for p in peers}
    return Row(bench=row.bench, subject=row.subject, unit=row.unit, samples=row.samples,
               higher_is_better=row.higher_is_better, ratios=ratios, note=row.note)


async def started(env: h.Env, name: str) -> tuple[h.Daemon, MessageBus]:
    d = env.daemon(name)
    d.start()
    bus = await h.connect(env.bus.address)
    await h.wait_for_name(bus)
    return d, bus


# --- 1. Format ------------------------------------------------------------------------------
def luks_format(img: Path, key: Path, *extra: str) -> float:
    return h.timed_run(["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode",
                        "--key-file", str(key), *extra, str(img)])


async def bench_format_unlock(env: h.Env, plan: Plan, rep: Report) -> None:
    say("[1/5] Format: wkd over D-Bus vs cryptsetup luksFormat (+ token import)")
    d, bus = await started(env, "format")
    imgs = env.root / "format-images"
    imgs.mkdir()
    key = env.root / "format.key"
    key.write_bytes(secrets.token_bytes(64))
    key.chmod(0o600)
    seq = [0]

    def fresh() -> Path:
        seq[0] += 1
        return h.make_image(imgs / f"{seq[0]}.img")

    # A wkd token of the real shape for the shell route to import (the admin script would
    # render it from a pkcs11-tool wrap; the wrap itself is timed in the rewrap peer).
    first = fresh()
    await h.format_volume(bus, str(first))
    token_json = subprocess.run(["cryptsetup", "token", "export", "--token-id", "0",
                                 str(first)], capture_output=True, check=True).stdout

    async def wkd_format() -> float:
        img = fresh()
        t0 = time.perf_counter()
        await h.format_volume(bus, str(img))
        return time.perf_counter() - t0

    def shell_with_token(*extra: str) -> float:
        img = fresh()
        dt = luks_format(img, key, *extra)
        return dt + h.timed_run(["cryptsetup", "token", "import", str(img)],
                                input_bytes=token_json)

    wkd_s: list[float] = []
    argon: list[float] = []
    argon_tok: list[float] = []
    pb: list[float] = []
    pb_tok: list[float] = []
    argon_img = first
    for i in range(plan.reps):
        wkd_s.append(await wkd_format())
        if i < plan.slow_reps:
            argon_img = fresh()
            argon.append(luks_format(argon_img, key))
            if not plan.quick:  # luksFormat + ~20 ms: the quick run skips the repeat
                argon_tok.append(shell_with_token())
        pb.append(luks_format(fresh(), key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
                              "1000"))
        pb_tok.append(shell_with_token("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"))
    peers = [
        Row("format", "luksFormat defaults (argon2id)", "s", tuple(argon),
            note="keyslot PBKDF benchmarked to ~2 s"),
        *([Row("format", "luksFormat defaults + token import", "s", tuple(argon_tok),
               note="the admin shell route")] if argon_tok else []),
        Row("format", "luksFormat pbkdf2-1000", "s", tuple(pb), note="no PBKDF cost"),
        Row("format", "luksFormat pbkdf2-1000 + token import", "s", tuple(pb_tok)),
    ]
    rep.add(with_ratios(Row("format", "wkd Format (D-Bus)", "s", tuple(wkd_s),
                            note="VK generated+wrapped in HSM, header, verify"), peers))
    for p in peers:
        rep.add(p)

    # --- 2. Unlock path (host: verify-only) ------------------------------------------------
    say("[2/5] Unlock path: wkd Unlock(verify-only) vs cryptsetup open --test-passphrase")
    wkd_img = fresh()
    await h.format_volume(bus, str(wkd_img))
    pb_img = fresh()
    luks_format(pb_img, key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
    test = ["cryptsetup", "open", "--test-passphrase", "--key-file", str(key)]
    busctl = ["busctl", f"--address={env.bus.address}", "call", h.SERVICE, h.ROOT, h.MANAGER,
              "Unlock", "sa{sv}", str(wkd_img), "1", "verify-only", "b", "true"]
    w_u: list[float] = []
    w_cli: list[float] = []
    a_u: list[float] = []
    p_u: list[float] = []
    for i in range(plan.fast_reps):
        t0 = time.perf_counter()
        await h.verify(bus, str(wkd_img))
        w_u.append(time.perf_counter() - t0)
        w_cli.append(h.timed_run(busctl))
        if i < plan.slow_reps:
            a_u.append(h.timed_run([*test, str(argon_img)]))
        p_u.append(h.timed_run([*test, str(pb_img)]))
    peers = [
        Row("unlock", "open --test-passphrase argon2id (defaults)", "s", tuple(a_u)),
        Row("unlock", "open --test-passphrase pbkdf2-1000", "s", tuple(p_u),
            note="tool overhead without PBKDF"),
    ]
    rep.add(with_ratios(Row("unlock", "wkd Unlock verify-only (D-Bus call)", "s", tuple(w_u),
                            note="unwrap in HSM + digest check"), peers))
    rep.add(with_ratios(Row("unlock", "wkd Unlock verify-only (busctl process)", "s",
                            tuple(w_cli), note="process-for-process with cryptsetup"), peers))
    for p in peers:
        rep.add(p)
    bus.disconnect()
    d.stop()


# --- 3. Rewrap at scale ----------------------------------------------------------------------
@dataclass
class Fleet:
    daemon: h.Daemon
    bus: MessageBus
    images: list[Path]
    keks: dict[str, str]
    template: Path
    under: str = KEK_A  # the KEK every volume is wrapped under now

    async def grow(self, n: int) -> list[float]:
        """Copy and register volumes up to n; returns each first (registering) Unlock's time."""
        register: list[float] = []
        while len(self.images) < n:
            img = self.template.parent / f"v{len(self.images):04d}.img"
            await asyncio.to_thread(h.copy_image_with_new_uuid, self.template, img)
            # RewrapAll covers registered volumes only; Unlock by path registers an image.
            t0 = time.perf_counter()
            await h.verify(self.bus, str(img))
            register.append(time.perf_counter() - t0)
            self.images.append(img)
        return register


async def make_fleet(env: h.Env) -> Fleet:
    d, bus = await started(env, "fleet")
    vols = env.root / "fleet-images"
    vols.mkdir()
    template = h.make_image(vols / "template.img")
    await h.format_volume(bus, str(template))
    await h.call(bus, h.ROOT, h.MANAGER, "CreateKek", "sa{sv}", KEK_B, {})
    fleet = Fleet(d, bus, [template], await h.list_keks(bus), template)
    return fleet


def peer_rewrap(fleet: Fleet, src: str, dst: str) -> float:
    env = dict(os.environ, PKCS11_MODULE=h.SOFTHSM_MODULE, TOKEN_LABEL="wkd-embedded",
               PIN_FILE=str(fleet.daemon.state_dir / "pin"),
               SOFTHSM2_CONF=fleet.daemon.softhsm_conf())
    return h.timed_run([str(PEER_REWRAP), fleet.keks[src], dst, fleet.keks[dst],
                        *map(str, fleet.images)], env=env)


async def bench_rewrap(fleet: Fleet, plan: Plan, rep: Report) -> None:
    say("[3/5] Rewrap at scale: RewrapAll vs pkcs11-tool + cryptsetup token script")
    per_n: dict[int, dict[str, Any]] = {}
    for n in plan.sizes:
        t0 = time.perf_counter()
        register = await fleet.grow(n)
        say(f"  fleet of {n} volumes ready ({time.perf_counter() - t0:.1f} s to copy and "
            "register)")
        # The first Unlock of a path registers it (volumes.json rewritten): its cost as the
        # registry grows from `before` to n volumes, against a repeat Unlock of the same path.
        last = str(fleet.images[-1])
        repeat = []
        for _ in range(len(register[-plan.fast_reps:])):
            c0 = time.perf_counter()
            await h.verify(fleet.bus, last)
            repeat.append(time.perf_counter() - c0)
        rep.add(Row("register", f"first Unlock of a path (registers), at {n} volumes", "s",
                    tuple(register[-plan.fast_reps:]),
                    note="registers the path (coalesced registry write)"))
        rep.add(Row("register", f"repeat Unlock of a path, at {n} volumes", "s",
                    tuple(repeat)))
        wkd_s: list[float] = []
        peer_s: list[float] = []
        for _ in range(plan.reps):
            other = KEK_B if fleet.under == KEK_A else KEK_A
            dt, result = await h.rewrap_all(fleet.bus, fleet.under, other)
            if result[1] != n:
                raise h.BenchError(f"RewrapAll rewrapped {result[1]} of {n} volumes")
            wkd_s.append(dt)
            fleet.under = other
            if n <= plan.peer_max_n:
                other = KEK_B if fleet.under == KEK_A else KEK_A
                peer_s.append(await asyncio.to_thread(peer_rewrap, fleet, fleet.under, other))
                fleet.under = other
        # The peer's tokens must still open the volumes: wkd checks one against the digest.
        await h.verify(fleet.bus, str(fleet.images[-1]))
        wkd_rate = tuple(n / s for s in wkd_s)
        peers = []
        note = ""
        if peer_s:
            peers.append(Row("rewrap", f"script N={n}", "vol/s", tuple(n / s for s in peer_s),
                             higher_is_better=True, note="pkcs11-tool x3 + cryptsetup x3"))
        else:
            # Per-volume work of the script does not depend on N (one process chain per
            # volume), so its rate at the largest measured N stands in for this N.
            base = per_n[plan.peer_max_n]["peer_s"]
            scale = n / plan.peer_max_n
            peer_s = [s * scale for s in base]
            peers.append(Row("rewrap", f"script N={n} (extrapolated)", "vol/s",
                             tuple(n / s for s in peer_s), higher_is_better=True,
                             note=f"from N={plan.peer_max_n} x{scale:g}, not run"))
            note = "peer extrapolated"
        rep.add(with_ratios(Row("rewrap", f"wkd RewrapAll N={n}", "vol/s", wkd_rate,
                                higher_is_better=True, note=note), peers))
        for p in peers:
            rep.add(p)
        rep.add(Row("rewrap", f"wkd RewrapAll N={n} wall time", "s", tuple(wkd_s)))
        per_n[n] = {"wkd_s": wkd_s, "peer_s": peer_s}
    ns = sorted(per_n)
    if len(ns) >= 2:
        rep.extra["rewrap_growth_exponent_wkd"] = growth_exponent(
            ns, [percentile(per_n[n]["wkd_s"], 50) for n in ns])
        measured = [n for n in ns if n <= plan.peer_max_n]
        if len(measured) >= 2:
            rep.extra["rewrap_growth_exponent_peer"] = growth_exponent(
                measured, [percentile(per_n[n]["peer_s"], 50) for n in measured])
    rep.extra["rewrap_per_n"] = per_n


# --- 4. Bus ----------------------------------------------------------------------------------
async def timed_calls(make_call: Any, count: int) -> tuple[float, list[float]]:
    lat: list[float] = []
    t0 = time.perf_counter()
    for _ in range(count):
        c0 = time.perf_counter()
        await make_call()
        lat.append(time.perf_counter() - c0)
    return time.perf_counter() - t0, lat


def lat_note(lat: list[float]) -> str:
    return (f"p50 {percentile(lat, 50) * 1000:.2f} ms, "
            f"p99 {percentile(lat, 99) * 1000:.2f} ms")


async def unlock_client(img: str, bus: MessageBus, count: int) -> list[float]:
    """One client's verify-only unlocks of its own volume (no per-volume lock contention)."""
    return (await timed_calls(lambda: h.verify(bus, img), count))[1]


async def bench_bus(env: h.Env, fleet: Fleet, plan: Plan, rep: Report) -> None:
    n = len(fleet.images)
    say(f"[4/5] Bus: calls/s and latency with {n} volumes")
    bus = fleet.bus
    (paths,) = await h.call(bus, h.ROOT, h.MANAGER, "ListVolumes", "a{sv}", {})
    vol = paths[0]

    async def gmo() -> None:
        await h.call(bus, h.ROOT, h.OBJMGR, "GetManagedObjects")

    async def prop() -> None:
        await h.call(bus, vol, h.PROPS, "Get", "ss", h.VOLUME, "Kek")

    async def list_volumes() -> None:
        await h.call(bus, h.ROOT, h.MANAGER, "ListVolumes", "a{sv}", {})

    async def ping() -> None:
        await h.call(bus, h.ROOT, "org.freedesktop.DBus.Peer", "Ping")

    cases = [
        (f"GetManagedObjects ({n} volumes)", gmo, max(10, plan.bus_calls // 10)),
        (f"ListVolumes ({n} volumes)", list_volumes, max(5, plan.bus_calls // 30)),
        ("Properties.Get Volume.Kek", prop, plan.bus_calls),
        ("Peer.Ping (bus floor)", ping, plan.bus_calls),
    ]
    for name, fn, count in cases:
        rates: list[float] = []
        lat: list[float] = []
        for _ in range(plan.reps):
            total, ls = await timed_calls(fn, count)
            rates.append(count / total)
            lat += ls
        rep.add(Row("bus", name, "calls/s", tuple(rates), higher_is_better=True,
                    note=lat_note(lat)))
        rep.extra[f"bus_latency_{name}"] = {"p50": percentile(lat, 50),
                                            "p99": percentile(lat, 99)}

    images = [str(p) for p in fleet.images]
    for clients in (1, 10, 50):
        conns = [await h.connect(env.bus.address) for _ in range(clients)]
        try:
            per = max(1, plan.unlock_calls // clients)
            rates = []
            lat = []
            for _ in range(plan.reps):
                t0 = time.perf_counter()
                got = await asyncio.gather(*(unlock_client(images[i % len(images)], c, per)
                                             for i, c in enumerate(conns)))
                total = time.perf_counter() - t0
                rates.append(per * clients / total)
                lat += [x for g in got for x in g]
            rep.add(Row("bus", f"Unlock verify-only, {clients} clients", "calls/s",
                        tuple(rates), higher_is_better=True, note=lat_note(lat)))
            rep.extra[f"bus_unlock_{clients}"] = {"p50": percentile(lat, 50),
                                                  "p99": percentile(lat, 99)}
        finally:
            for c in conns:
                c.disconnect()


# --- 5. Daemon start-up and memory -----------------------------------------------------------
async def bench_daemon(env: h.Env, fleet: Fleet, plan: Plan, rep: Report) -> None:
    say("[5/5] Daemon: exec -> READY=1, RSS idle and after many calls")
    # Only one daemon can own org.wkd1 on the bus: the fleet's goes first.
    fleet.bus.disconnect()
    fleet.daemon.stop()
    first: list[float] = []
    warm: list[float] = []
    floor: list[float] = []
    imports: list[float] = []
    for i in range(plan.reps):
        d = env.daemon(f"start{i}")
        first.append(d.start())
        d.stop()
        warm.append(d.start())
        d.stop()
        floor.append(h.timed_run([sys.executable, "-c", "pass"]))
        imports.append(h.timed_run([sys.executable, "-c",
                                    "import wkd.system.daemon, wkd.bus.service, wkd.engine, "
                                    "pkcs11"],
                                   env=dict(os.environ, PYTHONPATH=str(h.REPO))))
    rep.add(Row("daemon", "start to READY=1, first (token init)", "s", tuple(first)))
    rep.add(Row("daemon", "start to READY=1, warm, 0 volumes", "s", tuple(warm)))
    rep.add(Row("daemon", "python -c pass (floor)", "s", tuple(floor)))
    rep.add(Row("daemon", "python imports of wkd daemon", "s", tuple(imports)))

    # Warm start with the whole fleet registered: start-up reconciles every known volume.
    big: list[float] = []
    for _ in range(plan.reps):
        fleet.daemon.stop()
        big.append(fleet.daemon.start())
    registered = len(json.loads((fleet.daemon.state_dir / "volumes.json").read_text())
                     ["volumes"])
    rep.add(Row("daemon", f"start to READY=1, warm, {registered} volumes", "s",
                tuple(big)))
    bus = await h.connect(env.bus.address)
    await h.wait_for_name(bus)
    fleet.bus = bus
    pid = fleet.daemon.pid
    await asyncio.sleep(1.0)
    idle = h.rss_kib(pid)
    (paths,) = await h.call(bus, h.ROOT, h.MANAGER, "ListVolumes", "a{sv}", {})
    images = [str(p) for p in fleet.images]
    clients = 10
    conns = [await h.connect(env.bus.address) for _ in range(clients)]
    readings: list[tuple[int, int]] = [(0, idle)]
    done = 0

    async def client(i: int, c: MessageBus, count: int) -> None:
        for k in range(count):
            j = i * 7919 + k
            match k % 4:
                case 0:
                    await h.verify(c, images[j % len(images)])
                case 1:
                    await h.call(c, paths[j % len(paths)], h.PROPS, "GetAll", "s", h.VOLUME)
                case 2:
                    await h.call(c, h.ROOT, h.MANAGER, "ListKeks", "a{sv}", {})
                case _:
                    await h.call(c, paths[j % len(paths)], h.PROPS, "Get", "ss", h.VOLUME,
                                 "Device")

    step = plan.soak_calls // 5
    try:
        while done < plan.soak_calls:
            await asyncio.gather(*(client(i, c, step // clients) for i, c in enumerate(conns)))
            done += step
            readings.append((done, h.rss_kib(pid)))
    finally:
        for c in conns:
            c.disconnect()
    mib = [r / 1024 for _, r in readings]
    rep.add(Row("daemon", f"RSS idle ({registered} volumes)", "MiB", (mib[0],)))
    rep.add(Row("daemon", f"RSS after {done} calls", "MiB", (mib[-1],),
                note=f"growth {mib[-1] - mib[0]:+.1f} MiB; second half "
                     f"{mib[-1] - mib[len(mib) // 2]:+.1f} MiB"))
    rep.extra["rss_kib_by_calls"] = readings


# --- profile -------------------------------------------------------------------------------
async def profile(env: h.Env, fleet: Fleet, plan: Plan, rep: Report) -> None:
    if Sampler.available() is None:
        say("[profile] py-spy is not installed (.venv/bin/pip install py-spy): skipped")
        return
    say("[profile] py-spy on the daemon during RewrapAll and verify-only unlocks")
    out: dict[str, Any] = {}
    pid = fleet.daemon.pid
    with Sampler(pid, env.root / "rewrap.raw") as s:
        other = KEK_B if fleet.under == KEK_A else KEK_A
        await h.rewrap_all(fleet.bus, fleet.under, other)
        fleet.under = other
    out["RewrapAll"] = {"volumes": len(fleet.images), **s.result()}
    img = str(fleet.images[0])
    calls = plan.bus_calls * 2
    with Sampler(pid, env.root / "unlock.raw") as s:
        for _ in range(calls):
            await h.verify(fleet.bus, img)
    out["Unlock verify-only"] = {"calls": calls, **s.result()}
    with Sampler(pid, env.root / "list.raw") as s:
        for _ in range(10):
            await h.call(fleet.bus, h.ROOT, h.MANAGER, "ListVolumes", "a{sv}", {})
    out["ListVolumes"] = {"calls": 10, "volumes": len(fleet.images), **s.result()}
    fmt_dir = env.root / "profile-format"
    fmt_dir.mkdir()
    with Sampler(pid, env.root / "format.raw") as s:
        for i in range(20):
            await h.format_volume(fleet.bus, str(h.make_image(fmt_dir / f"{i}.img")))
    out["Format"] = {"calls": 20, **s.result()}
    for name, p in out.items():
        say(f"  {name}: " + ", ".join(f"{k} {v:.0%}" for k, v in p["shares"].items()))
    rep.extra["profile"] = out


# --- VM results (bench/vm_bench.py, run inside the system-test VM) ------------------------
def vm_rows(path: Path) -> list[Row]:
    """Rows with ratios from a VM unlock measurement (bench/vm_bench.py: its own output, the
    30_bench_unlock scenario's result, or the system-test tier's summary.json)."""
    return vm_bench.vm_rows(json.loads(path.read_text()))


# --- main ----------------------------------------------------------------------------------
def meta(plan: Plan, seconds: float) -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True,
                                  check=False).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": plan.quick, "seconds": round(seconds, 1), "cpus": os.cpu_count(),
        "loadavg_end": os.getloadavg(), "kernel": platform.release(),
        "python": platform.python_version(),
        "cryptsetup": version(["cryptsetup", "--version"]),
        "softhsm": version(["softhsm2-util", "--version"]),
    }


def _quiet_eof(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # dbus-fast leaves an EOFError future behind when a peer goes away (a daemon we stop):
    # expected here, noise in the output.
    if isinstance(context.get("exception"), EOFError):
        return
    loop.default_exception_handler(context)


async def run_all(plan: Plan, keep: bool) -> Report:
    asyncio.get_running_loop().set_exception_handler(_quiet_eof)
    rep = Report()
    env = h.Env(keep=keep)
    say(f"scratch: {env.root}")
    try:
        await bench_format_unlock(env, plan, rep)
        fleet = await make_fleet(env)
        await bench_rewrap(fleet, plan, rep)
        await bench_bus(env, fleet, plan, rep)
        if plan.profile:
            await profile(env, fleet, plan, rep)
        await bench_daemon(env, fleet, plan, rep)
        fleet.bus.disconnect()
    finally:
        env.close()
    return rep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="~2 minute smoke version")
    p.add_argument("--out", default=str(BENCH_DIR / "results" / "results.json"))
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--vm-json", metavar="FILE",
                   help="add the rows of a bench/vm_unlock.sh result (run in the VM)")
    p.add_argument("--only-vm", action="store_true",
                   help="with --vm-json: print only those rows, run nothing on the host")
    args = p.parse_args(argv)
    if args.only_vm:
        if not args.vm_json:
            p.error("--only-vm needs --vm-json")
        print(format_table(vm_rows(Path(args.vm_json))))
        return 0
    if os.geteuid() != 0:
        print("bench: run as root (LUKS2 headers, the daemon's state)", file=sys.stderr)
        return 1
    plan = Plan.make(args.quick, not args.no_profile)
    t0 = time.perf_counter()
    try:
        rep = asyncio.run(run_all(plan, args.keep))
    except h.BenchError as e:
        print(f"bench FAILED: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    if args.vm_json:
        rep.rows.extend(vm_rows(Path(args.vm_json)))
    table = format_table(rep.rows)
    print("\n" + table)
    for k, v in rep.extra.items():
        if k.startswith("rewrap_growth"):
            print(f"{k}: {v:.2f}  (time ~ N^k; 1.0 = linear)")
    print(f"\ntotal {seconds:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta(plan, seconds), "rows": [row_to_json(r) for r in rep.rows],
           "extra": rep.extra}
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(format_table(rep.rows, markdown=True) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
