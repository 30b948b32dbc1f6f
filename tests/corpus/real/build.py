#!/usr/bin/env python3
"""Builds the real-text corpus (tests/corpus/real/corpus.jsonl) from text found on
this machine: Debian package documentation (licences, changelogs, READMEs),
source code (Rust crates in ~/.cargo/registry, Python packages, shell scripts,
C headers), JSON and YAML files, and the gettext catalogs (.mo) of Debian
packages for other languages and scripts.

Deterministic for a given set of files: candidates are listed in sorted order
and picked and cut with a fixed seed. A fresh machine may hold other files, so
the built corpus is checked in and the tests read that; this script is for
regeneration. Every sample records its source file (and where it was cut);
excerpts are short.

    python3 tests/corpus/real/build.py            # writes tests/corpus/real/corpus.jsonl
"""

import glob
import gettext
import gzip
import hashlib
import json
import os
import random
import subprocess
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.jsonl")
PER_CLASS = 160
SEED = 25
HOME = os.path.expanduser("~")

# Languages of each script class, from /usr/share/locale/<lang>/LC_MESSAGES/*.mo.
LOCALES = {
    "latin": ["fr", "de", "es", "pl", "cs", "vi", "tr", "pt_BR"],
    "cyrillic": ["ru", "uk", "bg", "sr"],
    "cjk": ["zh_CN", "zh_TW", "ja"],
    "korean": ["ko"],
    "other": ["ar", "hi", "el", "he", "fa", "th"],
}
# Report order.
CLASSES = ["english", "code", "json", "latin", "cyrillic", "cjk", "korean", "other"]


def read_text(path):
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read(400_000)
        else:
            with open(path, "rb") as f:
                data = f.read(400_000)
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return None


def target_len(rng, k):
    """A third of samples under 600 characters, the rest 600..3000 (log-uniform)."""
    if k % 3 == 0:
        return int(round(10 ** rng.uniform(1.3, 2.77)))  # 20..590
    return int(round(10 ** rng.uniform(2.78, 3.48)))  # 600..3000


def too_short(excerpt, n):
    """A long sample cut short (a small file): drawn again, so that the short
    samples stay a third."""
    return n >= 600 and len(excerpt) < 600


def cut_lines(text, n, rng):
    """An excerpt of about n characters starting and ending at line boundaries
    (or at a character boundary when the text has no usable lines)."""
    lines = text.splitlines(keepends=True)
    if len(lines) < 3:
        start = rng.randrange(0, max(1, len(text) - n))
        return text[start : start + n], f"chars {start}+{n}"
    total = len(text)
    start_char = rng.randrange(0, max(1, total - n))
    pos, i = 0, 0
    while i < len(lines) and pos + len(lines[i]) <= start_char:
        pos += len(lines[i])
        i += 1
    out, j = [], i
    while j < len(lines) and sum(map(len, out)) < n:
        out.append(lines[j])
        j += 1
    s = "".join(out)
    if len(s) > n * 1.5:
        s = s[:n]
    return s.rstrip("\n"), f"lines {i + 1}-{j}"


def files(patterns, min_size=400):
    out = set()
    for p in patterns:
        for f in glob.glob(p, recursive=True):
            try:
                if os.path.isfile(f) and os.path.getsize(f) >= min_size:
                    out.add(f)
            except OSError:
                pass
    return sorted(out)


def find(roots, names, min_size=400, max_size=3_000_000, exclude=("/target/", "/test", "/.git/")):
    """Files under roots whose name matches one of the globs (find(1) is much
    faster than recursive glob on big trees)."""
    expr = []
    for n in names:
        expr += ["-o", "-name", n] if expr else ["-name", n]
    roots = [r for r in roots if os.path.isdir(r)]
    if not roots:
        return []
    cmd = ["find", *roots, "-xdev", "-type", "f", "(", *expr, ")", "-size", f"+{min_size}c", "-size", f"-{max_size}c"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return sorted(f for f in res.stdout.splitlines() if not any(x in f for x in exclude))


def script_files():
    out = []
    for f in sorted(glob.glob("/usr/bin/*") + glob.glob("/usr/sbin/*") + glob.glob("/etc/init.d/*")):
        try:
            with open(f, "rb") as h:
                head = h.read(64)
        except OSError:
            continue
        if head.startswith(b"#!") and (b"sh" in head.split(b"\n")[0]) and os.path.getsize(f) > 800:
            out.append(f)
    return out


def pick_file_samples(cls, sources, rng, count):
    """count samples cut from files of several source kinds, round robin."""
    samples, k, tries = [], 0, 0
    kinds = [(name, fl) for name, fl in sources if fl]
    while len(samples) < count and tries < count * 40:
        tries += 1
        name, fl = kinds[k % len(kinds)]
        path = fl[rng.randrange(len(fl))]
        text = read_text(path)
        if not text or len(text.strip()) < 40:
            continue
        n = target_len(rng, len(samples))
        excerpt, where = cut_lines(text, n, rng)
        if len(excerpt.strip()) < 15 or too_short(excerpt, n):
            continue
        if cls == "english" and sum(ord(c) > 0x2FF for c in excerpt) > len(excerpt) * 0.02:
            continue
        k += 1
        samples.append(
            {
                "class": cls,
                "lang": name,
                "source": f"{path.replace(HOME, '~')} ({where})",
                "text": excerpt,
            }
        )
    return samples


def compact_json_sample(path, rng, n):
    text = read_text(path)
    if not text:
        return None
    try:
        v = json.loads(text)
    except ValueError:
        return None
    s = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    start = rng.randrange(0, max(1, len(s) - n))
    return s[start : start + n], f"compact, chars {start}+{n}"


def json_samples(rng, count):
    roots = [
        "/usr/share",
        "/usr/lib/google-cloud-sdk",
        "/usr/lib/node_modules",
        "/usr/lib/python3",
        HOME + "/.cargo/registry/src",
        HOME + "/.pyenv/versions",
    ]
    jsons = find(roots, ["*.json"])
    yamls = find(roots + ["/etc"], ["*.yaml", "*.yml"])
    samples, tries = [], 0
    while len(samples) < count and tries < count * 40:
        tries += 1
        k = len(samples)
        n = target_len(rng, k)
        kind = ["json", "json-compact", "yaml"][k % 3]
        fl = yamls if kind == "yaml" else jsons
        path = fl[rng.randrange(len(fl))]
        if kind == "json-compact":
            r = compact_json_sample(path, rng, n)
        else:
            text = read_text(path)
            r = cut_lines(text, n, rng) if text and len(text.strip()) > 40 else None
        if not r or len(r[0].strip()) < 15 or too_short(r[0], n):
            continue
        samples.append(
            {
                "class": "json",
                "lang": kind,
                "source": f"{path.replace(HOME, '~')} ({r[1]})",
                "text": r[0],
            }
        )
    return samples


def catalog(path):
    try:
        with open(path, "rb") as f:
            t = gettext.GNUTranslations(f)
    except (OSError, Exception):  # noqa: BLE001 - a broken catalog is skipped
        return []
    out = []
    for k, v in t._catalog.items():  # noqa: SLF001 - the parsed catalog
        if k == "" or (isinstance(k, tuple) and k[0] == ""):
            continue
        v = v.strip()
        if v and v != (k if isinstance(k, str) else k[0]):
            out.append(v)
    return out


def locale_samples(cls, langs, rng, count):
    cats = {}
    for lang in langs:
        for path in sorted(glob.glob(f"/usr/share/locale/{lang}/LC_MESSAGES/*.mo")):
            msgs = catalog(path)
            if len(msgs) >= 20:
                cats.setdefault(lang, []).append((path, msgs))
    samples, k, tries = [], 0, 0
    langs = [l for l in langs if l in cats]
    while len(samples) < count and tries < count * 40:
        tries += 1
        lang = langs[k % len(langs)]
        path, msgs = cats[lang][rng.randrange(len(cats[lang]))]
        n = target_len(rng, len(samples))
        i = rng.randrange(len(msgs))
        start, parts = i, []
        while i < len(msgs) and sum(len(p) + 1 for p in parts) < n:
            parts.append(msgs[i])
            i += 1
        text = "\n".join(parts)
        if len(text) > n * 1.5:
            text = text[:n]
        if len(text.strip()) < 10 or too_short(text, n):
            continue
        k += 1
        samples.append(
            {
                "class": cls,
                "lang": lang,
                "source": f"{path} (messages {start + 1}-{i})",
                "text": text,
            }
        )
    return samples


def main():
    rng = random.Random(SEED)
    english = [
        ("licence", files(["/usr/share/doc/*/copyright", "/usr/share/common-licenses/*"])),
        ("changelog", files(["/usr/share/doc/*/changelog*.gz", "/usr/share/doc/*/NEWS*.gz"])),
        (
            "docs",
            files(
                [
                    "/usr/share/doc/*/README*",
                    "/usr/share/doc/*/*.md*",
                    HOME + "/.cargo/registry/src/*/*/README.md",
                    "/work/main/.venv/lib/python3*/site-packages/*.dist-info/METADATA",
                ]
            ),
        ),
    ]
    code = [
        ("rust", find([HOME + "/.cargo/registry/src"], ["*.rs"])),
        ("python", find([HOME + "/.pyenv/versions", "/usr/lib/python3"], ["*.py"])),
        ("shell", script_files() + find(["/usr/share", "/etc"], ["*.sh"])),
        ("c", find(["/usr/include"], ["*.h"])),
        ("javascript", find(["/usr/lib/node_modules"], ["*.js"], exclude=("/target/", ".min.js"))),
    ]
    out = []
    out += pick_file_samples("english", english, rng, PER_CLASS)
    out += pick_file_samples("code", code, rng, PER_CLASS)
    out += json_samples(rng, PER_CLASS)
    for cls in ["latin", "cyrillic", "cjk", "korean", "other"]:
        out += locale_samples(cls, LOCALES[cls], rng, PER_CLASS)
    by_class = {c: [s for s in out if s["class"] == c] for c in CLASSES}
    with open(OUT, "w", encoding="utf-8") as f:
        for c in CLASSES:
            for k, s in enumerate(by_class[c]):
                s = {"id": f"{c}-{k}", **s}
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
    size = os.path.getsize(OUT)
    digest = hashlib.sha256(open(OUT, "rb").read()).hexdigest()[:12]
    counts = ", ".join(f"{c} {len(by_class[c])}" for c in CLASSES)
    print(f"wrote {OUT}: {counts}; {size} bytes, sha256 {digest}", file=sys.stderr)


if __name__ == "__main__":
    main()
