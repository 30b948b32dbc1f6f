#!/usr/bin/env python3
"""`make test` as stages: one line per stage with its result and time, a summary at the end.

Each stage is one or more make targets. Its output goes to .run/logs/<stage>.log; the
terminal gets one line per stage, except the end-to-end stage, whose pytest progress
(one line per file) is shown as it runs. A failing stage's log is shown in full, or
its last lines and the path when it is long. Setup and build failures stop the run
(nothing after them could pass); any other failure lets the rest run. The exit code is
non-zero when anything failed, and the last line is `N passed, N failed` (tests
counted in the test stages, one check per other stage).

Usage: tests/stages.py STAGE...   (stages: see STAGES)
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".run" / "logs"

# stage: (make targets, what it is, stop the run if it fails)
STAGES = {
    "setup": (["setup-test"], "the test tools (minutes on the first run only)", True),
    "build": (["build", "emulator", "build-fault", "build-hostcalls", "build-rls"], "the .wasm, emulator, fault and counting builds, RLS engine", True),
    "docs": (["docs"], "the book, internal links", False),
    "lint": (["lint"], "rustfmt, clippy (host, wasm32)", False),
    "unit": (["test-unit"], "cargo test --workspace", False),
    "wasm": (["test-wasm"], "the core's tests on wasm32 (node)", False),
    "rules": (["test-rules"], "the alert rules' promtool tests", False),
    "fuzz": (["test-fuzz"], "fuzz smoke, 10 s per target", False),
    "rls": (["test-rls"], "the global tier's engine on redis", False),
    "e2e": (["pytest-e2e"], "pytest in real Envoy, one line per file", False),
}
STREAMED = {"e2e"}
FULL_LOG_LINES = 200  # a failing stage's log up to this long is shown whole
TAIL_LINES = 120


def duration(s):
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


def counts(stage, text):
    """(passed, failed, skipped, detail) from a stage's log; None counts when it has none."""
    if stage in ("unit", "wasm", "rls"):
        p = f = i = 0
        found = False
        for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text):
            found = True
            p, f, i = p + int(m[1]), f + int(m[2]), i + int(m[3])
        if found:
            return p, f, i, f"{p} passed" + (f", {f} failed" if f else "") + (f", {i} ignored" if i else "")
    if stage == "e2e":
        # pytest's closing line, e.g. "==== 3 failed, 167 passed in 700.1s ====" (make may follow it)
        closing = [l for l in text.splitlines() if re.match(r"^=+ .*\d+ (passed|failed|errors?|skipped).* in [\d.]+s", l)]
        tail = closing[-1] if closing else ""
        n = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail)}
        if n:
            failed = n.get("failed", 0) + n.get("error", 0) + n.get("errors", 0)
            return n.get("passed", 0), failed, n.get("skipped", 0), tail.strip("= ")
    if stage == "fuzz":
        runs = [int(r) for r in re.findall(r"^fuzz \S+: (\d+) runs", text, re.M)]
        if runs:
            return None, None, None, f"{len(runs)} targets, {sum(runs):,} runs, no crash"
    if stage == "docs":
        m = re.findall(r"^links: .*$", text, re.M)
        if m:
            return None, None, None, m[-1][len("links: "):]
    return None, None, None, ""


def run_stage(name, targets):
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    make = os.environ.get("MAKE", "make")
    cmd = [make, "--no-print-directory", *targets]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("MAKEFLAGS", None)  # the stage's make is its own, not a sub-make of `make test`
    env.pop("MFLAGS", None)
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        if name in STREAMED:
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
            while True:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                out.write(chunk)
                out.flush()
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            rc = p.wait()
        else:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL).returncode
    return rc, log


def show_failure(name, log):
    rel = log.relative_to(ROOT)
    if name in STREAMED:
        print(f"    (its output is above; the whole log is {rel})")
        return
    lines = log.read_text(errors="replace").splitlines()
    if len(lines) <= FULL_LOG_LINES:
        print(f"---- {rel} ({len(lines)} lines) ----")
        body = lines
    else:
        print(f"---- the last {TAIL_LINES} of {len(lines)} lines of {rel} ----")
        body = lines[-TAIL_LINES:]
    print("\n".join(body))
    print(f"---- end of {rel} ----")


def main(names):
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        sys.exit(f"unknown stage(s): {' '.join(unknown)}; known: {' '.join(STAGES)}")
    width = max(len(n) for n in names)
    results = []
    stop = False
    start_all = time.monotonic()
    print(f"make test: {len(names)} stage{'s' if len(names) != 1 else ''} ({' '.join(names)}); logs in .run/logs/", flush=True)
    for i, name in enumerate(names, 1):
        targets, what, fatal = STAGES[name]
        head = f"[{i}/{len(names)}] {name:<{width}}"
        if stop:
            results.append((name, "skipped", 0.0, None, None, None, ""))
            print(f"{head}  skipped", flush=True)
            continue
        print(f"{head}  {what} ...", end="\n" if name in STREAMED else " ", flush=True)
        t0 = time.monotonic()
        rc, log = run_stage(name, targets)
        took = time.monotonic() - t0
        p, f, s, detail = counts(name, log.read_text(errors="replace"))
        status = "ok" if rc == 0 else "FAILED"
        result = f"{status} in {duration(took)}" + (f": {detail}" if detail else "")
        print(f"{head}  {result}" if name in STREAMED else result, flush=True)
        results.append((name, status, took, p, f, s, detail))
        if rc != 0:
            show_failure(name, log)
            stop = fatal

    passed = failed = skipped = 0
    print()
    print(f"summary ({duration(time.monotonic() - start_all)}; logs: .run/logs/<stage>.log):")
    for name, status, took, p, f, s, detail in results:
        if status == "skipped":
            print(f"  {name:<{width}}  skipped")
            continue
        if p is None:  # a stage without test counts is one check
            p, f, s = (1, 0, 0) if status == "ok" else (0, 1, 0)
        elif status != "ok" and f == 0:
            f = 1  # it failed outside its tests (a build error, say)
        passed, failed, skipped = passed + p, failed + f, skipped + s
        print(f"  {name:<{width}}  {status:<6} {duration(took):>7}  {detail}  (.run/logs/{name}.log)")
    not_run = sum(1 for r in results if r[1] == "skipped")
    failed += not_run
    line = f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else "")
    print(line, flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
