#!/usr/bin/env bash
# Makes target/patched/limitador-$VERSION: Limitador's crates.io source with one fix,
# which Cargo.toml's [patch.crates-io] points at. Idempotent; run by `make build-rls`.
#
# Why: limitador 0.11 to 0.14 do not compile with only the redis_storage feature:
# src/storage/keys.rs calls bin::key_for_counter_v2 from code built for Redis, but the
# `bin` module (and Counter::variables_for_key it uses) are behind
# cfg(feature = "disk_storage"), which brings RocksDB, a long C++ build. The fix widens
# those two cfgs to cfg(any(feature = "disk_storage", feature = "redis_storage")), the
# gate the same file already uses for the code that calls them (and allows dead code in
# `bin`, part of which only RocksDB uses).
#
# The source comes through cargo (cargo metadata on a one-dependency manifest).
set -euo pipefail
cd "$(dirname "$0")"
VERSION=0.14.0
DEST=target/patched/limitador-$VERSION
[ -f "$DEST/.llmcap-patched" ] && exit 0

FETCH=target/patched/fetch
mkdir -p "$FETCH/src"
cat > "$FETCH/Cargo.toml" <<TOML
[package]
name = "fetch-limitador"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
limitador = { version = "=$VERSION", default-features = false }

[workspace]
TOML
: > "$FETCH/src/lib.rs"
cp Cargo.lock "$FETCH/Cargo.lock"   # the same versions as the engine's own build
SRC=$(cargo metadata --format-version 1 --manifest-path "$FETCH/Cargo.toml" \
  | python3 -c 'import json, os, sys
m = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "limitador"))')
[ -f "$SRC/src/storage/keys.rs" ] || { echo "limitador source not found at $SRC" >&2; exit 1; }

rm -rf "$DEST.tmp"
mkdir -p "$(dirname "$DEST")"
cp -R "$SRC" "$DEST.tmp"
chmod -R u+w "$DEST.tmp"
OLD='#[cfg(feature = "disk_storage")]'
NEW='#[cfg(any(feature = "disk_storage", feature = "redis_storage"))]'
for f in src/storage/keys.rs src/counter.rs; do
  n=$(grep -cF "$OLD" "$DEST.tmp/$f" || true)
  [ "$n" = 1 ] || { echo "$f: expected one '$OLD', found $n: limitador changed, review the patch" >&2; exit 1; }
  python3 - "$DEST.tmp/$f" "$OLD" "$NEW" <<'PY'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
if path.endswith("keys.rs"):
    new += "\n#[allow(dead_code)]"
open(path, "w").write(text.replace(old, new))
PY
done
touch "$DEST.tmp/.llmcap-patched"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "patched limitador $VERSION into tests/rls/$DEST"
