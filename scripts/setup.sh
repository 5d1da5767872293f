#!/usr/bin/env bash
# Installs what adtally's builds and tests need, idempotently. A fresh machine
# has none of it; a machine that kept an earlier install skips each step.
#   - Rust targets wasm32-unknown-unknown and wasm32-wasip2
#   - wasm-bindgen-cli, the exact version of the wasm-bindgen crate
#   - a Python virtual environment with chdb-core (embedded ClickHouse 26.9)
#   - system tools missing from the machine: a C toolchain and make, curl,
#     python3-venv, Node.js, Chromium and its WebDriver (apt)
#   - the Tansu Kafka broker (unless ADTALLY_SKIP_TANSU=1)
set -euo pipefail
ADTALLY_HOME=${ADTALLY_HOME:-$HOME/.cache/adtally}
WASM_BINDGEN_VERSION=0.2.130
CHDB_VERSION=26.9.0
mkdir -p "$ADTALLY_HOME"
say() { echo "setup: $*"; }

# System tools: a C toolchain and make (librdkafka and Tansu build from
# source), python3-venv, curl (the tests query ClickHouse with it), Node.js
# (the JS build's conformance run), Chromium and ChromeDriver (the
# dashboard's browser test).
missing=()
for pair in cc:build-essential make:build-essential curl:curl node:nodejs chromium:chromium chromedriver:chromium-driver; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq $(printf '%s\n' "${missing[@]}" | sort -u)
fi

installed_targets=$(rustup target list --installed)
for t in wasm32-unknown-unknown wasm32-wasip2; do
  grep -qx "$t" <<<"$installed_targets" || { say "adding Rust target $t"; rustup target add "$t"; }
done

if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WASM_BINDGEN_VERSION" ]; then
  say "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (a few minutes)"
  # Not --locked: its lock file pins a webpki-roots release the registry no longer serves.
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

VENV=$ADTALLY_HOME/venv
# chdb-core is the engine; lz4 and clickhouse-cityhash let the embedded HTTP
# server read the LZ4-framed bodies the clickhouse crate sends by default,
# brotli and zstandard the br and zstd request bodies; clickhouse-connect,
# the official Python client, is what its tests talk to it with.
PY_PACKAGES=("chdb-core==$CHDB_VERSION" "lz4==4.4.5" "clickhouse-cityhash==1.0.2.6" "pytest==9.2.0"
  "brotli==1.2.1" "zstandard==0.25.0" "clickhouse-connect==1.12.0")
if ! "$VENV/bin/python" -c "import chdb, lz4.block, clickhouse_cityhash, pytest, brotli, zstandard, clickhouse_connect, importlib.metadata as m; assert m.version('chdb-core') == '$CHDB_VERSION'" 2>/dev/null; then
  say "installing ${PY_PACKAGES[*]} into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet "${PY_PACKAGES[@]}"
fi

if [ "${ADTALLY_SKIP_TANSU:-0}" != 1 ] && ! command -v tansu >/dev/null 2>&1; then
  say "installing the Tansu broker (11-15 minutes on 2 cores)"
  cargo install tansu --locked --features dynostore,libsql
fi
say "ready (ADTALLY_HOME=$ADTALLY_HOME)"
