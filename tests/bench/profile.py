#!/usr/bin/env python3
"""`make bench-profile`: where the filter's CPU per request goes (issue 24, item 1).

    make bench-profile                 # tests/bench/results/profile.{md,json}
    .venv/bin/python tests/bench/profile.py --smoke --out /tmp/p.md   # seconds
    .venv/bin/python tests/bench/profile.py --closing --out tests/bench/results/profile.md
    .venv/bin/python tests/bench/profile.py --from-json a.json --pool b.json,c.json --note "..."  # report again

bench.py's mock reads each request whole before answering, so upstream connections are reused
(tests/bench/results/profile-keepalive.md). `--closing`: the mock as it was before 2026-12-07,
answering at the request's headers, so Envoy closed every upstream connection and the proxy opened one
per request (tests/bench/results/profile.md).

One run, on loopback, with bench.py's mock, configurations and load (1 KB chat
request, wrk at 32 connections; every proxy `--concurrency 2`):

1. CPU per request of the Envoy process (user and system, from /proc/<pid>/stat)
   for `passthrough`, `wasm-floor`, `filter`, the one-mechanism-off variants of
   bench.py (`filter-ds` = no upstream instance, `filter-nohold`,
   `filter-nostate`, `filter-nometrics`, `filter-nolimits`, `filter-nochain`)
   and `filter-counting` (the `hostcall-count` build in the `filter`
   configuration: that build's own overhead). Variants interleave, alternating
   order; median over rounds.
2. Under the same load, `perf record -e cpu-clock -g` (frame pointers: Envoy's
   binary keeps them and so does V8's generated code, so the chains reach the
   thread's start) on the Envoy process, once per round and variant; samples
   pooled over rounds. Each sample goes to one bucket by its leaf and its chain:
   `wasm` (leaf in the Wasm module's compiled code), `v8 stubs` (leaf in the
   other anonymous executable mappings: the isolates' code ranges with V8's
   entry stubs and wrappers), `host calls` (leaf in Envoy or a library, called
   from Wasm code: a Wasm frame in the chain), `vm entry` (leaf in Envoy, no
   Wasm frame, but under the call sites that enter the VM: proxy-wasm-cpp-host
   and V8's call machinery), `envoy` (the rest of Envoy's text), `libc`
   (libc, libm, libstdc++, ld), `other`, `kernel`. User buckets become
   µs/request as their share of user samples × user CPU µs/request; `kernel` is
   the system CPU µs/request.
3. With the counting build (one worker, sequential requests, as
   bench.host_calls does), time inside the VM per callback and host calls per
   callback × the per-call cost timed in a tight loop, for `filter` and
   `wasm-floor`: the VM time by phase, split into our code and host calls.
4. The report: filter − passthrough decomposed into the floor, VM time by
   phase (counting build), Envoy-side work by mechanism (each ablation's
   difference in the perf Envoy-side buckets), and the residual.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

import bench  # noqa: E402
import harness  # noqa: E402

RESULTS = bench.RESULTS
VARIANTS = ["passthrough", "wasm-floor", "filter", "filter-ds", "filter-nohold", "filter-nostate",
            "filter-nometrics", "filter-nolimits", "filter-nochain", "filter-counting"]
SMOKE_VARIANTS = ["passthrough", "filter"]
# Ablation variant -> the mechanism it switches off.
MECHANISMS = {
    "filter-ds": "upstream instance (per-attempt upstream filter)",
    "filter-nohold": "holding headers until the body is read",
    "filter-nostate": "filter state (access-log state)",
    "filter-nometrics": "metrics",
    "filter-nolimits": "limits (RPM, TPM)",
    "filter-nochain": "failover chain (cluster matcher, route re-resolution)",
}
BUCKETS = ["wasm", "v8 stubs", "host calls", "vm entry", "envoy", "libc", "other", "kernel"]
VM_SIDE = ["wasm", "v8 stubs", "host calls"]  # what the counting build's timers see (vm entry is before them)
ENVOY_SIDE = ["vm entry", "envoy", "libc", "other", "kernel"]
PHASES = [  # (label, callbacks)
    ("request headers", ["ds_on_http_request_headers"]),
    ("request body", ["ds_on_http_request_body"]),
    ("response headers", ["ds_on_http_response_headers"]),
    ("response body", ["ds_on_http_response_body"]),
    ("log", ["ds_on_log"]),
    ("upstream instance", ["up_on_http_request_headers", "up_on_http_request_body", "up_on_http_response_headers",
                           "up_on_http_response_body", "up_on_log", "up_on_done"]),
    ("tick", ["root_on_tick"]),
]
# Kinds the tight loop does not time, costed as the nearest one that is (a buffer read allocates in the VM
# like a header read).
COST_PROXY = {"buffer_get": "header_get", "log": "metric", "tick": "time", "continue": "time",
              "other": "property_get", "header_remove": "header_set", "buffer_set": "header_set"}
ENTRY_DEPTH = 3  # Envoy frames under the outermost Wasm frame that count as the VM's entry

# The same module built with its symbols (`make bench-profile` builds it): names for the functions of the
# release module, by index (same sources, same function order; only data addresses move).
NAMES_WASM = ROOT / "target" / "names" / "wasm32-wasip1" / "release" / "llm_capacity.wasm"


# ---------------------------------------------------------------------------
# the module's functions
# ---------------------------------------------------------------------------

def _leb(b: bytes, i: int) -> tuple[int, int]:
    r = sh = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << sh
        sh += 7
        if x < 0x80:
            return r, i


def wasm_module(path: Path) -> dict:
    """Imported function count, body sizes of the declared functions, names (name section) by index."""
    b = path.read_bytes()
    imports, sizes, names, exports, i = 0, [], {}, {}, 8
    while i < len(b):
        sid = b[i]
        n, i = _leb(b, i + 1)
        body, i = b[i:i + n], i + n
        if sid == 2:  # imports: only function imports shift the indexes
            cnt, j = _leb(body, 0)
            for _ in range(cnt):
                for _ in range(2):
                    ln, j = _leb(body, j)
                    j += ln
                kind, j = body[j], j + 1
                if kind == 0:
                    _, j = _leb(body, j)
                    imports += 1
                elif kind in (1, 2):  # table (reftype, limits), memory (limits)
                    j += kind == 1
                    fl, j = _leb(body, j)
                    _, j = _leb(body, j)
                    if fl & 1:
                        _, j = _leb(body, j)
                else:  # global: valtype, mutability
                    j += 2
        elif sid == 7:  # exports: the callbacks' names survive stripping
            cnt, j = _leb(body, 0)
            for _ in range(cnt):
                ln, j = _leb(body, j)
                name, j = body[j:j + ln].decode(errors="replace"), j + ln
                kind, j = body[j], j + 1
                idx, j = _leb(body, j)
                if kind == 0:
                    exports[idx] = name
        elif sid == 10:
            cnt, j = _leb(body, 0)
            for _ in range(cnt):
                sz, j = _leb(body, j)
                sizes.append(sz)
                j += sz
        elif sid == 0:
            ln, j = _leb(body, 0)
            if body[j:j + ln] == b"name":
                j += ln
                while j < len(body):
                    sub = body[j]
                    sz, j = _leb(body, j + 1)
                    if sub == 1:
                        cnt, k = _leb(body, j)
                        for _ in range(cnt):
                            idx, k = _leb(body, k)
                            ln2, k = _leb(body, k)
                            names[idx] = demangle(body[k:k + ln2].decode(errors="replace"))
                            k += ln2
                    j += sz
    return {"imports": imports, "sizes": sizes, "names": names, "exports": exports}


def demangle(sym: str) -> str:
    """A legacy Rust symbol (_ZN...17h<hash>E) as a path, without its hash; anything else as it is."""
    if not sym.startswith("_ZN"):
        return sym
    parts, i = [], 3
    while i < len(sym) and sym[i].isdigit():
        j = i
        while sym[j].isdigit():
            j += 1
        n = int(sym[i:j])
        parts.append(sym[j:j + n])
        i = j + n
    if parts and re.fullmatch(r"h[0-9a-f]{16}", parts[-1]):
        parts.pop()
    out = "::".join(parts)
    for k, v in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$RF$", "&"), ("$BP$", "*"), ("$C$", ","),
                 ("$u7b$", "{"), ("$u7d$", "}"), ("$u5b$", "["), ("$u5d$", "]"), ("$u27$", "'"), ("..", "::")):
        out = out.replace(k, v)
    return out


def function_names(release: Path) -> tuple[dict[int, str], str]:
    """Names of the release module's functions (by index), and how far they can be trusted."""
    if not NAMES_WASM.exists():
        return {}, "no symbol build (target/names): functions by index"
    a, b = wasm_module(release), wasm_module(NAMES_WASM)
    if a["imports"] != b["imports"] or len(a["sizes"]) != len(b["sizes"]):
        return {}, "the symbol build has other functions: functions by index"
    same = sum(x == y for x, y in zip(a["sizes"], b["sizes"])) / max(len(a["sizes"]), 1)
    return b["names"], (f"names from the same sources built with symbols: {len(a['sizes'])} functions in both, "
                        f"{same:.0%} of the same size at the same index")


def jump_table(pid: int, code: tuple[int, int], functions: int) -> list[int]:
    """Where V8 put each declared function's code: its jump table, at the start of the module's code space,
    one 8-byte slot per function (`jmp rel32`, padding), in declaration order. Empty if it is not that."""
    with open(f"/proc/{pid}/mem", "rb") as m:
        m.seek(code[0])
        raw = m.read(functions * 8)
    starts = []
    for i in range(functions):
        slot = raw[8 * i: 8 * i + 8]
        if len(slot) < 5 or slot[0] != 0xE9:
            return []
        starts.append(code[0] + 8 * i + 5 + int.from_bytes(slot[1:5], "little", signed=True))
    return starts if all(code[0] <= a < code[1] for a in starts) else []


# ---------------------------------------------------------------------------
# perf
# ---------------------------------------------------------------------------

def perf_bin() -> str:
    p = shutil.which("perf")
    if not p:
        raise SystemExit("perf is needed (Debian package linux-perf)")
    return p


def exec_regions(pid: int) -> list[tuple[int, int, str]]:
    """The process's executable mappings: (start, end, path or '' for anonymous)."""
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        f = line.split(maxsplit=5)
        if "x" not in f[1]:
            continue
        a, b = (int(x, 16) for x in f[0].split("-"))
        out.append((a, b, f[5].strip() if len(f) > 5 else ""))
    return out


class Record:
    """`perf record -g` on a process while a load runs. Kernel samples need root or perf_event_paranoid < 2;
    without them the event is user space only (`cpu-clock:u`) and `kernel` is the system CPU alone."""

    event = "cpu-clock"

    def __init__(self, perf: str, pid: int, out: Path, freq: int):
        self.out = out
        for event in dict.fromkeys([Record.event, "cpu-clock:u"]):
            self.proc = subprocess.Popen([perf, "record", "-q", "-e", event, "-F", str(freq), "-g",
                                          "-p", str(pid), "-o", str(out)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.3)  # attached before the load starts
            if self.proc.poll() is None:
                Record.event = event
                return
            print(f"perf record -e {event}: {self.proc.stderr.read().decode(errors='replace')[-300:]}",
                  file=sys.stderr)
        raise RuntimeError("perf record cannot sample this process")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=60)
        if not self.out.exists():
            raise RuntimeError(f"perf record wrote nothing: {err.decode(errors='replace')[-500:]}")


def perf_chains(perf: str, data: Path) -> list[tuple[str, list[tuple[int, str]]]]:
    """Samples as (thread name, [(address, dso)] leaf first)."""
    text = subprocess.run([perf, "script", "-i", str(data), "-F", "comm,tid,ip,dso"], capture_output=True,
                          text=True, timeout=300).stdout
    out = []
    for block in text.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if len(lines) < 2:
            continue
        comm = lines[0].split()[0]
        frames = []
        for ln in lines[1:]:
            m = re.match(r"\s*([0-9a-f]+)\s+\((.*)\)\s*$", ln)
            if m:
                frames.append((int(m.group(1), 16), m.group(2)))
        if frames:
            out.append((comm, frames))
    return out


def wasm_code_region(regions) -> tuple[int, int] | None:
    """The Wasm module's compiled code, shared by the workers' VMs: the small anonymous executable mapping
    (each isolate's code range, with V8's entry stubs and wrappers, is a large reservation of its own)."""
    small = [(a, b) for a, b, p in regions if (not p or p.startswith("[anon")) and b - a < 256 << 20]
    return max(small, key=lambda r: r[1] - r[0]) if small else None


CALLBACK_PHASE = {"proxy_on_request_headers": "request headers", "proxy_on_request_body": "request body",
                  "proxy_on_response_headers": "response headers", "proxy_on_response_body": "response body",
                  "proxy_on_log": "log", "proxy_on_tick": "tick", "proxy_on_context_create": "stream start and end",
                  "proxy_on_done": "stream start and end", "proxy_on_delete": "stream start and end"}


def phase_map(module: dict) -> tuple[dict[int, str], set[int]]:
    """Declared function index -> phase for the callbacks (exports), and the upstream instance's functions
    (its callbacks share the exports with the downstream filter's)."""
    imp = module["imports"]
    names, _ = function_names(harness.WASM) if module.get("release") else ({}, "")
    phases = {i - imp: CALLBACK_PHASE.get(n, "other callbacks") for i, n in module["exports"].items()
              if n.startswith("proxy_on_") and i >= imp}
    upstream = {i - imp for i, n in names.items() if "UpstreamAttempt" in n or "exchange::attempt::" in n}
    return phases, upstream


def classify(samples, regions, starts: list[int] | None = None,
             phases: tuple[dict[int, str], set[int]] = ({}, set())) -> tuple[dict[str, int], dict]:
    """Samples per bucket (see the module doc), what the split rests on, and (given the functions' code
    starts) samples per Wasm function: in it (self) and under it (inclusive)."""
    anon = [(a, b) for a, b, p in regions if not p or p.startswith("[anon")]
    # The Wasm module's code is shared by the workers' VMs: the small anonymous executable mapping(s);
    # each isolate's code range (entry stubs, wrappers) is a large reservation of its own.
    wasm_code = [(a, b) for a, b in anon if b - a < 256 << 20]
    stubs = [(a, b) for a, b in anon if b - a >= 256 << 20]

    def kind(addr: int, dso: str) -> str:
        if addr >= 0xffff800000000000 or "kernel" in dso:
            return "kernel"
        if any(a <= addr < b for a, b in wasm_code):
            return "wasm"
        if any(a <= addr < b for a, b in stubs) or dso.startswith("/tmp/perf-") or dso in ("[unknown]", "//anon"):
            return "v8 stubs"
        if dso.endswith("/envoy"):
            return "envoy"
        if re.search(r"/(libc|libm|libstdc\+\+|libgcc_s|ld-linux[^/]*|libpthread|librt|libdl)[.-]", dso):
            return "libc"
        return "other"

    kinds = [[kind(a, d) for a, d in frames] for _, frames in samples]
    # The VM's entry sites: the Envoy frames right under the outermost Wasm or stub frame.
    entry: dict[int, int] = {}
    for (_, frames), ks in zip(samples, kinds):
        vm = [i for i, k in enumerate(ks) if k in ("wasm", "v8 stubs")]
        if vm:
            for a, _ in frames[vm[-1] + 1: vm[-1] + 1 + ENTRY_DEPTH]:
                entry[a] = entry.get(a, 0) + 1
    counts = {b: 0 for b in BUCKETS}
    threads: dict[str, int] = {}
    order = sorted(range(len(starts or [])), key=lambda i: starts[i])
    sorted_starts = [starts[i] for i in order]
    fself: dict[int, int] = {}
    fincl: dict[int, int] = {}
    fhost: dict[int, int] = {}
    fphase: dict[str, dict[str, int]] = {}

    # V8 compiles the wrappers through which Wasm calls the host into the module's code space too (after or
    # between functions): a Wasm-region frame whose callee is Envoy code is one, and a leaf sample within a
    # wrapper's size of such a return address is in one.
    wrap_ret = sorted({frames[i][0] for (_, frames), ks in zip(samples, kinds)
                       for i in range(1, len(ks)) if ks[i] == "wasm" and ks[i - 1] not in ("wasm", "v8 stubs")})
    WRAP = -1

    def func(addr: int, leaf: bool) -> int | None:
        w = bisect.bisect_left(wrap_ret, addr)
        near = [abs(wrap_ret[j] - addr) for j in (w - 1, w) if 0 <= j < len(wrap_ret)]
        if near and (min(near) == 0 or (leaf and min(near) < 256)):
            return WRAP
        k = bisect.bisect_right(sorted_starts, addr) - 1
        return order[k] if k >= 0 else None

    for (comm, frames), ks in zip(samples, kinds):
        leaf = ks[0]
        threads[comm] = threads.get(comm, 0) + 1
        if sorted_starts:
            fs = [func(a, i == 0) for i, ((a, _), k) in enumerate(zip(frames, ks)) if k == "wasm"]
            if ks[0] == "wasm" and fs[0] is not None:
                fself[fs[0]] = fself.get(fs[0], 0) + 1
            for f in {f for f in fs if f is not None}:
                fincl[f] = fincl.get(f, 0) + 1
            # the callback the host entered (the outermost export), and whether under a host call
            entered = next((phases[0][f] for f in reversed(fs) if f in phases[0]), None)
            if entered:
                if any(f in phases[1] for f in fs):
                    entered = "upstream instance"
                row = fphase.setdefault(entered, {"own": 0, "host": 0})
                row["host" if WRAP in fs or leaf != "wasm" else "own"] += 1
            # under a host call: charged to the function that made it (the first one under the wrapper)
            if WRAP in fs:
                caller = next((f for f in fs[fs.index(WRAP) + 1:] if f not in (WRAP, None)), None)
                if caller is not None:
                    fhost[caller] = fhost.get(caller, 0) + 1
        if leaf in ("wasm", "v8 stubs", "kernel"):
            b = leaf
        elif any(k in ("wasm", "v8 stubs") for k in ks[1:]):
            b = "host calls"
        elif any(a in entry for a, _ in frames[1:]):
            b = "vm entry"
        else:
            b = leaf
        counts[b] += 1
    info = {"func_self": fself, "func_incl": fincl, "func_host": fhost, "phase": fphase, "wasm_code_bytes": sum(b - a for a, b in wasm_code),
            "isolate_ranges": len(stubs), "entry_sites": len(entry), "wrapper_sites": len(wrap_ret), "threads": threads,
            "kernel_under_vm": sum(1 for ks in kinds if ks[0] == "kernel" and ("wasm" in ks or "v8 stubs" in ks)),
            "truncated": sum(1 for _, frames in samples if not any("libc" in d for _, d in frames[-2:]))}
    return counts, info


# ---------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------

def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process and its threads (bench.cpu_seconds, kept apart)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / tck, int(f[12]) / tck


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure(args, tmp: Path, upstream: harness.Envoy, variants: list[str]) -> tuple[dict, dict, list[str]]:
    wrk, perf = bench.ensure_wrk(), perf_bin()
    envs: dict[str, harness.Envoy] = {}
    problems: list[str] = []
    cpu: dict[str, list[dict]] = {v: [] for v in variants}
    samples: dict[str, dict[str, int]] = {v: {b: 0 for b in BUCKETS} for v in variants}
    info: dict[str, dict] = {}
    funcs: dict[str, dict[str, dict[int, int]]] = {}
    phase_samples: dict[str, dict[str, dict[str, int]]] = {}
    wasm_modules = {v: wasm_module(bench.HOSTCALLS_WASM) if v == "filter-counting" else
                    {**wasm_module(harness.WASM), "release": True} for v in variants if v != "passthrough"}
    try:
        hdrs = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
        lua = bench.write_lua(tmp / "profile.lua", bench.request_body("1k"), hdrs)
        for v in variants:  # started together, then waited for (each compiles the module)
            base, wasm = (v, None) if v != "filter-counting" else ("filter", bench.HOSTCALLS_WASM)
            envs[v] = harness.Envoy(tmp, bench.proxy_config(base, upstream.port, wasm), name=v.replace("-", "_"),
                                    concurrency=2, expect_start=False)
        for v in variants:
            envs[v]._wait_ready()
            bench.sanity(bench.Target(v, envs[v].port, envs[v].proc.pid, {"Authorization": "Bearer bench"}), "1k", False)
        url = {v: f"http://127.0.0.1:{e.port}{bench.PATH}" for v, e in envs.items()}
        for v in variants if args.warmup > 0 else []:  # warm-up: V8 tiers, pools fill
            bench.run_wrk(wrk, lua, url[v], 2, 16, args.warmup)
        for rnd in range(args.rounds):
            for v in (variants if rnd % 2 == 0 else list(reversed(variants))):
                pid = envs[v].proc.pid
                u0, s0 = cpu_split(pid)
                r = bench.run_wrk(wrk, lua, url[v], 2, args.conns, args.duration)
                u1, s1 = cpu_split(pid)
                n = max(r["requests"], 1)
                cpu[v].append({"user_us": (u1 - u0) / n * 1e6, "sys_us": (s1 - s0) / n * 1e6, "rps": r["rps"],
                               "errors": r["errors"]})
                rec = Record(perf, pid, tmp / f"{v}-{rnd}.data", args.freq)
                try:
                    rp = bench.run_wrk(wrk, lua, url[v], 2, args.conns, args.duration)
                finally:
                    rec.stop()
                regions = exec_regions(pid)
                code = wasm_code_region(regions)
                module = wasm_modules.get(v)
                starts = jump_table(pid, code, len(module["sizes"])) if code and module else []
                counts, inf = classify(perf_chains(perf, rec.out), regions, starts,
                                       phase_map(module) if module else ({}, set()))
                rec.out.unlink()
                for b, c in counts.items():
                    samples[v][b] += c
                for key in ("func_self", "func_incl", "func_host"):
                    acc = funcs.setdefault(v, {}).setdefault(key, {})
                    for f, c in inf.pop(key).items():
                        acc[f] = acc.get(f, 0) + c
                for ph, row in inf.pop("phase").items():
                    acc = phase_samples.setdefault(v, {}).setdefault(ph, {"own": 0, "host": 0})
                    for k2, c in row.items():
                        acc[k2] += c
                inf["jump_table"] = bool(starts)
                info[v] = inf
                c = cpu[v][-1]
                print(f"round {rnd + 1} {v:16} {r['rps']:7.0f} req/s  user {c['user_us']:5.0f}  sys {c['sys_us']:5.0f}"
                      f" µs/req  perf {sum(counts.values())} samples ({rp['rps']:.0f} req/s)  load {load_avg()}",
                      file=sys.stderr, flush=True)
                if r["errors"] or rp["errors"]:
                    problems.append(f"{v}: wrk errors {r['errors'] + rp['errors']}")
        conns = {v: upstream_connections(envs[v]) for v in ("passthrough", "filter")}
    finally:
        for e in envs.values():
            e.stop()
    res = {}
    for v in variants:
        user = statistics.median(x["user_us"] for x in cpu[v])
        sys_ = statistics.median(x["sys_us"] for x in cpu[v])
        tot_user = sum(c for b, c in samples[v].items() if b != "kernel")
        us = {b: (c / tot_user * user if tot_user else 0.0) for b, c in samples[v].items() if b != "kernel"}
        us["kernel"] = sys_
        res[v] = {"user_us": user, "sys_us": sys_, "cpu_us": statistics.median(x["user_us"] + x["sys_us"] for x in cpu[v]),
                  "rps": statistics.median(x["rps"] for x in cpu[v]), "rounds": cpu[v], "samples": samples[v],
                  "bucket_us": us, "perf": info.get(v, {}),
                  # per declared function (index in the code section): µs/request in it and under it
                  "functions": {k: {i: c / tot_user * user for i, c in fs.items()} if tot_user else {}
                                for k, fs in funcs.get(v, {}).items()},
                  # callback the host entered -> µs/request in the module's code and under host calls
                  "phases": {ph: {k: c / tot_user * user if tot_user else 0.0 for k, c in row.items()}
                             for ph, row in phase_samples.get(v, {}).items()},
                  "kernel_share_perf": samples[v]["kernel"] / max(sum(samples[v].values()), 1),
                  "kernel_share_proc": sys_ / max(user + sys_, 1e-9)}
    return res, {"load_after": load_avg(), "upstream_connections": conns}, problems


# ---------------------------------------------------------------------------
# inside the VM (the counting build)
# ---------------------------------------------------------------------------

def mock_config(keepalive: bool) -> dict:
    """bench.py's mock, which reads the whole request before answering; without `keepalive`, as it was before
    2026-12-07: answering at the request's headers (direct_response), before the body has arrived, so Envoy
    closes that connection (HTTP/1.1: the rest of the request is unread) and the proxy opens a new upstream
    connection per request (upstream_cx_total = upstream_rq_total, upstream_cx_close_notify)."""
    cfg = bench.upstream_config()
    if not keepalive:
        hcm = bench._hcm(cfg)
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.buffer"]
    return cfg


def upstream_connections(env: harness.Envoy) -> tuple[int, int]:
    s = env.stats_json()
    return s.get("cluster.emulator.upstream_cx_total", 0), s.get("cluster.emulator.upstream_rq_total", 0)


def cb_spent(env: harness.Envoy) -> dict[str, float]:
    """The counting build's totals per callback: ns and entries, as "<callback>:ns" / ":calls"."""
    out = {}
    for name, _, v in harness.prom_samples(env):
        m = re.fullmatch(r"llmcap_debug_cb_(\w+)_(ns|calls)", name)
        if m:
            out[f"{m.group(1)}:{m.group(2)}"] = v
    return out


def vm_under_load(args, tmp: Path, upstream: harness.Envoy, variant: str) -> dict:
    """ns and entries per request per callback inside the VM, the counting build under the wrk load. One
    worker: each VM publishes its own totals as gauges, so two workers would overwrite each other's."""
    wrk = bench.ensure_wrk()
    env = harness.Envoy(tmp, bench.proxy_config(variant, upstream.port, bench.HOSTCALLS_WASM),
                        name=f"count-load-{variant}", concurrency=1)
    try:
        hdrs = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
        lua = bench.write_lua(tmp / "count.lua", bench.request_body("1k"), hdrs)
        url = f"http://127.0.0.1:{env.port}{bench.PATH}"
        if args.warmup > 0:
            bench.run_wrk(wrk, lua, url, 2, 16, args.warmup)
        time.sleep(0.3)  # the tick publishes the totals
        before = cb_spent(env)
        r = bench.run_wrk(wrk, lua, url, 2, args.conns, args.duration)
        time.sleep(0.3)
        after = cb_spent(env)
    finally:
        env.stop()
    out: dict[str, dict[str, float]] = {}
    for k, v in after.items():
        cb, unit = k.split(":")
        out.setdefault(cb, {})[unit] = (v - before.get(k, 0)) / max(r["requests"], 1)
    return {"per_callback": out, "requests": r["requests"], "rps": r["rps"], "errors": r["errors"]}


def vm_phases(args, tmp: Path, upstream: harness.Envoy, n: int, variants: list[str]) -> dict:
    """Per variant: per phase, ns per request inside the VM, host calls by kind, the calls' cost and the rest."""
    if not bench.HOSTCALLS_WASM.exists():
        return {}
    # The same case twice: the first batch warms the VM (lazy compilation, caches), the second, counted
    # from the first's totals, is the figure.
    hc = {v: bench.host_calls(tmp, upstream.port, [("1k", False)] * 2, n=n, variant=v) for v in variants}
    loaded = {v: vm_under_load(args, tmp, upstream, v) for v in variants}
    call_ns = hc.get("filter", {}).get("call_ns", {})
    empty = call_ns.get("empty", 0)
    cost = {k: max(v - empty, 0) for k, v in call_ns.items() if k != "empty"}
    out = {"call_ns": call_ns, "n": n}
    for v, h in hc.items():
        seq = h.get("cb_spent", {}).get("1k", {})
        spent = loaded[v]["per_callback"]
        by_cb = h.get("per_callback", {}).get("1k", {})
        phases = {}
        for label, cbs in PHASES:
            ns = sum(spent.get(cb, {}).get("ns", 0) for cb in cbs)
            kinds: dict[str, float] = {}
            for cb in cbs:
                for k, c in by_cb.get(cb, {}).items():
                    kinds[k] = kinds.get(k, 0) + c
            host = sum(c * cost.get(k, cost.get(COST_PROXY.get(k, ""), 0)) for k, c in kinds.items())
            phases[label] = {"ns": ns, "entries": sum(spent.get(cb, {}).get("calls", 0) for cb in cbs),
                             "seq_ns": sum(seq.get(cb, {}).get("ns", 0) for cb in cbs),
                             "seq_entries": sum(seq.get(cb, {}).get("calls", 0) for cb in cbs),
                             "host_calls": sum(kinds.values()), "kinds": kinds,
                             "host_ns": min(host, ns), "own_ns": max(ns - host, 0)}
        out[v] = {"phases": phases, "untimed_calls": sum(by_cb.get("vm", {}).values()),
                  "load": {k: loaded[v][k] for k in ("requests", "rps", "errors")}}
    return out


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def f1(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def paired(res: dict, a: str, b: str) -> tuple[float, float, float]:
    """a − b in CPU µs/request: the median of the differences within each round (the two ran minutes
    apart at most, under the same neighbours), and the lowest and highest of them."""
    ds = sorted(x["user_us"] + x["sys_us"] - y["user_us"] - y["sys_us"]
                for x, y in zip(res[a]["rounds"], res[b]["rounds"]))
    return statistics.median(ds), ds[0], ds[-1]


def pooled(res: dict, others: list[dict]) -> dict:
    """The CPU rounds of several runs of the same variants, one after the other (for the paired differences)."""
    out = {v: dict(r) for v, r in res.items()}
    for o in others:
        for v in out:
            if v in o:
                out[v]["rounds"] = out[v]["rounds"] + o[v]["rounds"]
    return out


def decompose(res: dict, vm: dict, cpu: dict | None = None) -> dict:
    """filter - passthrough in parts; missing parts (smoke) are None. `cpu`: the results whose rounds give the
    CPU differences (several runs pooled), by default this run's."""
    side = lambda v, bs: sum(res[v]["bucket_us"][b] for b in bs) if v in res else None  # noqa: E731
    cpu = cpu or res
    gap, lo, hi = paired(cpu, "filter", "passthrough")
    d: dict = {"gap": gap, "gap_range": [lo, hi], "floor": None, "vm": {}, "mech": {}}
    if "wasm-floor" in res:
        d["floor"], lo, hi = paired(cpu, "wasm-floor", "passthrough")
        d["floor_range"] = [lo, hi]
    # (b) from perf: the callback the host entered, in the module's code or under host calls (filter − floor);
    # the counting build's timers (under load, filter − floor) beside it
    fp, wp = res["filter"].get("phases", {}), res.get("wasm-floor", {}).get("phases", {})
    for label in [p for p, _ in PHASES] + ["stream start and end", "other callbacks"]:
        a, b = fp.get(label, {}), wp.get(label, {})
        row = {k: a.get(k, 0) - b.get(k, 0) for k in ("own", "host")}
        if "filter" in vm and label in vm["filter"]["phases"]:
            q = vm.get("wasm-floor", {}).get("phases", {}).get(label, {"ns": 0})
            row["counting"] = (vm["filter"]["phases"][label]["ns"] - q["ns"]) / 1000
        if a or "counting" in row:
            d["vm"][label] = row
    # (c) a mechanism's Envoy-side work: what switching it off saves (paired) less what it saves inside the VM
    for v, name in MECHANISMS.items():
        if v in res:
            total, lo, hi = paired(cpu, "filter", v)
            vm_side = side("filter", VM_SIDE) - side(v, VM_SIDE)
            d["mech"][v] = {"name": name, "envoy_side": total - vm_side, "vm_side": vm_side, "total": total,
                            "range": [lo, hi], "within_noise": lo <= 0 <= hi}
    explained = (d["floor"] or 0) + sum(x["own"] + x["host"] for x in d["vm"].values()) + \
        sum(x["envoy_side"] for x in d["mech"].values())
    d["residual"] = gap - explained
    d["rounds"] = len(cpu["filter"]["rounds"])
    # perf's own split of the gap above the floor, for the check of the VM rows
    if "wasm-floor" in res:
        d["perf_vm_above_floor"] = side("filter", VM_SIDE) - side("wasm-floor", VM_SIDE)
        d["perf_envoy_above_floor"] = side("filter", ENVOY_SIDE) - side("wasm-floor", ENVOY_SIDE)
    return d


def report(res: dict, vm: dict, d: dict, meta: dict, args) -> str:
    L = ["# Profile: where the filter's CPU per request goes (tests/bench/profile.py, `make bench-profile`)", "",
         f"Run {meta['date']} on {meta['cpus']} CPUs ({meta['cpu']}), kernel {meta['kernel']}, Envoy "
         f"{meta['envoy']}, git {meta['git']}; load average {meta['load_before']} before, {meta['load_after']} "
         f"after (the machine is shared: absolute figures are noisy, compare within this run).", "",
         f"Load: bench.py's 1 KB chat request, wrk 2 threads {args.conns} connections, {args.duration:g} s per "
         f"measurement after a {args.warmup:g} s warm-up, variants interleaved in alternating order, median of "
         f"{args.rounds} round(s). CPU from /proc/<pid>/stat in runs without perf; `perf record -e {Record.event} -F "
         f"{args.freq} -g -p <envoy>` in a second run of the same load right after each, samples pooled over "
         f"rounds. Counting build: {vm.get('n', 0)} sequential requests, one worker.", ""]
    cx = meta.get("upstream_connections", {}).get("filter")
    if cx:
        mock = ("bench.py's, which reads each request whole, then answers (upstream connections reused)"
                if meta.get("keepalive") else
                "answering at the request headers (`--closing`: a new upstream connection per request)")
        L += [f"Mock: {mock}; "
              f"`filter` opened {cx[0]:,} upstream connections for {cx[1]:,} upstream requests"
              + (" (one per request: the mock answers before the body is read, so Envoy closes the connection)"
                 if cx[0] > cx[1] / 2 else "") + ".", ""]
    base = res["passthrough"]
    L += ["## CPU per request, and where perf's samples land (µs/request)", "",
          "User buckets are their share of user samples × user CPU; `kernel` is the system CPU. "
          "`wasm` = the module's compiled code; `v8 stubs` = V8's entry stubs and wrappers; `host calls` = Envoy "
          "code called from Wasm; `vm entry` = proxy-wasm-cpp-host and V8 call machinery entering the VM; "
          "`envoy` = the rest of Envoy's text (HTTP, router, network, stats, allocator, V8 runtime outside "
          "calls); `libc` = libc, libm, libstdc++, ld.", "",
          "| variant | req/s | CPU | vs passthrough | user | sys | " + " | ".join(BUCKETS) + " | samples |",
          "|---|---:|---:|---:|---:|---:|" + "---:|" * len(BUCKETS) + "---:|"]
    for v, r in res.items():
        L.append(f"| {v} | {r['rps']:.0f} | {r['cpu_us']:.0f} | {r['cpu_us'] - base['cpu_us']:+.0f} | "
                 f"{r['user_us']:.0f} | {r['sys_us']:.0f} | " + " | ".join(f1(r['bucket_us'][b]) for b in BUCKETS)
                 + f" | {sum(r['samples'].values())} |")
    L.append("")
    # the decomposition
    gap = d["gap"]
    L += ["## filter − passthrough, decomposed (µs/request)", "",
          "| part | our code | host calls | µs/request | share of the gap | source |", "|---|---:|---:|---:|---:|---|"]
    rng = lambda r: f"rounds {r[0]:+.0f} to {r[1]:+.0f}"  # noqa: E731
    pool = (f", pooled with the run(s) of {', '.join(meta['pooled'])}" if meta.get("pooled") else "")
    L.append(f"| **gap: filter − passthrough** | | | **{gap:.1f}** | 100% | CPU, /proc: the median of {d.get('rounds', 0)} "
             f"paired differences by round{pool} ({rng(d['gap_range'])}) |")
    if d["floor"] is not None:
        L.append(f"| (a) floor: wasm-floor − passthrough | | | {d['floor']:.1f} | {d['floor'] / gap:.0%} | CPU, /proc "
                 f"({rng(d['floor_range'])}) |")
    else:
        L.append("| (a) floor: wasm-floor − passthrough | | | - | - | not measured |")
    vm_sum = 0.0
    for label, x in d["vm"].items():
        t = x["own"] + x["host"]
        vm_sum += t
        cnt = f"; counting build {x['counting']:.1f}" if "counting" in x else ""
        L.append(f"| (b) in the VM: {label} | {x['own']:.1f} | {x['host']:.1f} | {t:.1f} | {t / gap:.0%} | "
                 f"perf by callback, filter − floor{cnt} |")
    if d["vm"]:
        own = sum(x["own"] for x in d["vm"].values())
        cnt = sum(x.get("counting", 0) for x in d["vm"].values())
        L.append(f"| (b) in the VM, all phases | {own:.1f} | {vm_sum - own:.1f} | {vm_sum:.1f} | {vm_sum / gap:.0%} | "
                 f"counting build {cnt:.1f} |")
    mech_sum = 0.0
    for v, x in d["mech"].items():
        mech_sum += x["envoy_side"]
        noise = ", **within the noise**" if x["within_noise"] else ""
        L.append(f"| (c) Envoy side: {x['name']} | | | {x['envoy_side']:.1f} | {x['envoy_side'] / gap:.0%} | "
                 f"filter − {v}: CPU {x['total']:.1f} ({rng(x['range'])}{noise}) less {x['vm_side']:.1f} in the VM "
                 "(perf) |")
    if d["mech"]:
        L.append(f"| (c) Envoy side, the mechanisms | | | {mech_sum:.1f} | {mech_sum / gap:.0%} | |")
    L.append(f"| (d) residual | | | {d['residual']:.1f} | {d['residual'] / gap:.0%} | gap − (a) − (b) − (c) |")
    L.append("")
    explained = gap - d["residual"]
    L.append(f"Check: (a) + (b) + (c) = {explained:.1f} µs of the measured {gap:.1f} µs ({explained / gap:.0%}); "
             f"residual {d['residual']:+.1f} µs.")
    if "perf_vm_above_floor" in d:
        cnt = sum(x.get("counting", 0) for x in d["vm"].values())
        L.append(f"Inside the VM, filter − wasm-floor: {d['perf_vm_above_floor']:.1f} µs in perf's buckets (wasm + "
                 f"v8 stubs + host calls), {vm_sum:.1f} µs of it placed in a callback (b); the counting build's "
                 f"timers give {cnt:.1f} µs (under load, one worker, their own cost included). Outside it: "
                 f"{d['perf_envoy_above_floor']:.1f} µs on the Envoy side (vm entry + envoy + libc + other + kernel), "
                 f"{sum(x['envoy_side'] for x in d['mech'].values()):.1f} µs of it placed in a mechanism (c).")
    L.append("")
    if "filter-counting" in res:
        oc = res["filter-counting"]["cpu_us"] - res["filter"]["cpu_us"]
        L += [f"The counting build itself costs {oc:+.1f} µs/request under this load (`filter-counting` − `filter`): "
              "its timers and counters, and the gauges it writes at each request's end.", ""]
    if getattr(args, "note", ""):
        L += ["## Notes", "", args.note.strip(), ""]
    L += remaining(res, vm, d)
    L += hot_functions(res)
    if "filter" in vm:
        L += ["## Inside the VM by callback (counting build, `filter`, ns/request)", "",
              f"Under load: the counting build, one worker, wrk {args.conns} connections for {args.duration:g} s "
              f"({vm['filter']['load']['rps']:.0f} req/s). Sequential: {vm['n']} requests one after another on "
              "one connection, after as many to warm up. Host calls per request are the sequential run's (the "
              "same every request); their cost is the count × the tight-loop cost per kind, so `our code` "
              "includes what a call costs beyond the tight loop (a cold first call).", "",
              "| phase | entries/req | ns/req under load | host calls/req | host-call ns | our code ns | "
              "ns/req sequential | wasm-floor ns/req under load |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, _ in PHASES:
            p = vm["filter"]["phases"][label]
            q = vm.get("wasm-floor", {}).get("phases", {}).get(label, {})
            L.append(f"| {label} | {p['entries']:.2f} | {p['ns']:.0f} | {p['host_calls']:.2f} | {p['host_ns']:.0f} | "
                     f"{p['own_ns']:.0f} | {p['seq_ns']:.0f} | {q.get('ns', 0):.0f} |")
        tot = lambda k: sum(p[k] for p in vm["filter"]["phases"].values())  # noqa: E731
        L.append(f"| **all** | {tot('entries'):.2f} | {tot('ns'):.0f} | {tot('host_calls'):.2f} | {tot('host_ns'):.0f} | "
                 f"{tot('own_ns'):.0f} | {tot('seq_ns'):.0f} | "
                 f"{sum(p['ns'] for p in vm.get('wasm-floor', {}).get('phases', {}).values()):.0f} |")
        L += ["", "Per-call costs used (ns, tight loop, empty loop subtracted): " + ", ".join(
            f"{k} {v}" for k, v in vm["call_ns"].items()) + "; kinds not timed use: " + ", ".join(
            f"{k} as {v}" for k, v in COST_PROXY.items()) + ".", ""]
    return "\n".join(L)


def remaining(res: dict, vm: dict, d: dict) -> list[str]:
    """The paragraph: where filter − wasm-floor goes, from perf's buckets in this run."""
    if "wasm-floor" not in res or "filter" not in vm:
        return []
    f, w = res["filter"]["bucket_us"], res["wasm-floor"]["bucket_us"]
    diff = {b: f[b] - w[b] for b in BUCKETS}
    above = res["filter"]["cpu_us"] - res["wasm-floor"]["cpu_us"]
    tight = sum(p["host_ns"] for p in vm["filter"]["phases"].values()) / 1000
    host = diff["host calls"]
    fn = res["filter"].get("functions", {})
    own = fn.get("func_self", {})
    module = wasm_module(harness.WASM)
    names, _ = function_names(harness.WASM)
    imp = module["imports"]
    alloc = sum(v for i, v in own.items() if int(i) >= 0 and re.search(
        r"dlmalloc|dlfree|dlrealloc|^realloc$|^malloc$|^free$|__rust_(alloc|dealloc|realloc)|__rdl_",
        names.get(imp + int(i), "")))
    incl = lambda v: res[v].get("functions", {}).get("func_incl", {})  # noqa: E731
    under = sum(x for i, x in incl("filter").items() if int(i) < 0) - \
        sum(x for i, x in incl("wasm-floor").items() if int(i) < 0)
    vm_perf = sum(diff[b] for b in VM_SIDE)
    calls = sum(p["host_calls"] for p in vm["filter"]["phases"].values())
    seq = sum(p["seq_ns"] for p in vm["filter"]["phases"].values()) / 1000
    load = sum(p["ns"] for p in vm["filter"]["phases"].values()) / 1000
    return ["## Where the time above the floor goes", "",
            f"filter − wasm-floor is {above:.0f} µs/request of CPU in this run. perf puts {vm_perf:.0f} µs of it "
            f"inside the VM: {under:.0f} µs under host calls (V8's wrappers, Envoy's implementation of the call, "
            f"the callback that allocates a result; {calls:.1f} calls per request, {under / calls if calls else 0:.1f} µs "
            f"each on average, against {tight / calls if calls else 0:.2f} µs at their tight-loop cost) and "
            f"{vm_perf - under:.0f} µs in the module's own code (the allocator, dlmalloc and friends, {alloc:.0f} µs "
            f"of it). Outside the VM: {diff['vm entry']:.0f} µs entering it, "
            f"{diff['envoy'] + diff['libc'] + diff['other']:.0f} µs in the rest of Envoy's user-space code and "
            f"{diff['kernel']:.0f} µs in the kernel (system time). The counting build's timers give {load:.0f} µs "
            f"inside the VM per request under load (their own overhead included) and {seq:.0f} µs for lone "
            "sequential requests, where every callback starts cold.", ""]


def hot_functions(res: dict, top: int = 25) -> list[str]:
    """The module's functions under load, from perf (`filter`): the callbacks (exports) inclusive, then the
    functions with most samples in them."""
    r = res.get("filter", {})
    fn = r.get("functions", {})
    if not fn.get("func_incl"):
        return []
    module = wasm_module(harness.WASM)
    names, trust = function_names(harness.WASM)
    imp = module["imports"]
    name = lambda i: ("(V8's wrappers for host calls)" if int(i) < 0 else  # noqa: E731
                      module["exports"].get(imp + int(i)) or names.get(imp + int(i)) or f"func[{imp + int(i)}]")
    incl, own = fn["func_incl"], fn.get("func_self", {})
    floor = res.get("wasm-floor", {}).get("functions", {}).get("func_incl", {})
    L = ["## Inside the module under load (perf, `filter`, µs/request)", "",
         "Samples in the module's code mapped to its functions through V8's jump table (one slot per function, "
         f"read from the running process); {trust}. `under it` counts a sample once for every function on its "
         "chain, host calls made from it included; a host call that allocates its result calls back into the "
         "module (`proxy_on_memory_allocate` under another callback).", "",
         "| callback (export) | under it | in wasm-floor |", "|---|---:|---:|"]
    for i, v in sorted(incl.items(), key=lambda kv: -kv[1]):
        if (imp + int(i)) in module["exports"]:
            L.append(f"| {name(i)} | {v:.1f} | {floor.get(i, 0):.1f} |")
    L += ["", f"| function (top {top} by samples in it) | in it | under it |", "|---|---:|---:|"]
    for i, v in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        L.append(f"| `{name(i)[:110]}` | {v:.1f} | {incl.get(i, 0):.1f} |")
    L.append(f"| all functions | {sum(own.values()):.1f} | |")
    host = fn.get("func_host", {})
    if host:
        L += ["", "Host calls under load by the function that makes them (µs/request under the call: V8's "
              "wrapper, Envoy's implementation, a callback to allocate the result):", "",
              "| function making host calls | µs/request |", "|---|---:|"]
        for i, v in sorted(host.items(), key=lambda kv: -kv[1])[:15]:
            L.append(f"| `{name(i)[:110]}` | {v:.1f} |")
        L.append(f"| all | {sum(host.values()):.1f} |")
    L.append("")
    return L


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=bench.LOAD_CONNS)
    ap.add_argument("--freq", type=int, default=999, help="perf sampling rate (Hz)")
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per counting-build case")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(RESULTS / "profile.md"))
    ap.add_argument("--smoke", action="store_true", help="seconds: passthrough and filter, one short round")
    ap.add_argument("--note", default="", help="markdown appended to the report (## Notes)")
    ap.add_argument("--closing", action="store_true",
                    help="the mock answers at the request's headers, so Envoy closes every upstream connection")
    ap.add_argument("--from-json", help="write the report again from a run's profile.json, measuring nothing")
    ap.add_argument("--pool", default="", help="with --from-json: other runs' profile.json (comma list) whose "
                    "CPU rounds join this run's for the paired differences")
    args = ap.parse_args(argv)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        for k, v in data["meta"].get("args", {}).items():
            setattr(args, k, v)
        Record.event = data["meta"].get("event", Record.event)
        others = [json.loads(Path(p).read_text()) for p in args.pool.split(",") if p]
        cpu = pooled(data["results"], [o["results"] for o in others])
        data["decomposition"] = decompose(data["results"], data["vm"], cpu)
        data["meta"]["pooled"] = [o["meta"]["date"] for o in others]
        md = report(data["results"], data["vm"], data["decomposition"], data["meta"], args)
        Path(args.out).write_text(md)
        if others:
            Path(args.out).with_suffix(".json").write_text(json.dumps(data, indent=1))
        print(md)
        return 0
    if args.smoke:
        args.duration, args.warmup, args.rounds, args.requests = 1.0, 0.0, 1, 10
        args.variants = ",".join(SMOKE_VARIANTS)
    variants = [v for v in args.variants.split(",") if v]
    assert variants[:1] == ["passthrough"] and "filter" in variants and set(variants) <= set(VARIANTS), variants
    for w in (harness.WASM, bench.HOSTCALLS_WASM):
        if not w.exists():
            print(f"missing {w}: run `make build build-hostcalls` first", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="profile-"))
    try:
        meta = bench.machine()
        meta["load_before"] = load_avg()
        upstream = harness.Envoy(tmp, mock_config(not args.closing), name="upstream", concurrency=2)
        res, m2, problems = measure(args, tmp, upstream, variants)
        meta.update(m2)
        meta["event"] = Record.event
        meta["keepalive"] = not args.closing
        meta["args"] = {k: getattr(args, k) for k in ("duration", "warmup", "rounds", "conns", "freq", "requests")}
        vm = vm_phases(args, tmp, upstream, args.requests, ["filter"] + (["wasm-floor"] if "wasm-floor" in variants else []))
        if not vm:
            problems.append("no counting-build figures")
        d = decompose(res, vm)
        md = report(res, vm, d, meta, args)
        if problems:
            md += "\n**Problems:** " + "; ".join(problems) + "\n"
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(md)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": res, "vm": vm, "decomposition": d},
                                                       indent=1))
        print(md)
        return 1 if problems else 0
    finally:
        harness.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
