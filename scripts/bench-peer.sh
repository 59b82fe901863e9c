#!/usr/bin/env bash
# Issue 21's same-run comparison: the ceiling, prismd's `refresh` over plain HTTP and over HTTPS
# (keep-alive), and the peer, node-oidc-provider 8.8.1's refresh grant
# (bench/oidc-provider/server.mjs), each driven by prism-bench's own client and then by wrk
# with the same requests, connections and duration. Not a test: the figures depend on the
# machine (see BENCHMARKS.md for how to read them).
#
# What it provides: wrk, Node.js and npm from Debian's packages when missing (node-oidc-provider
# 8.8.1 runs on Node.js 18.12 or later), and node-oidc-provider from the committed lock file,
# installed outside the clone (PRISM_BENCH_PEER_DIR, default /var/tmp/prism-peer-oidc-provider).
#
#   scripts/bench-peer.sh                       # release build, SQLite, 64 connections, 10 s each
#   scripts/bench-peer.sh --open-loop 0.5       # further prism-bench flags
#   scripts/bench-peer.sh --database-url postgres://postgres@127.0.0.1:5432/test
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/debian-packages.sh
source scripts/lib/debian-packages.sh
install_missing bench-peer.sh wrk:wrk node:nodejs npm:npm

# The peer, from the committed lock file; reinstalled when the lock changes.
peer_dir=${PRISM_BENCH_PEER_DIR:-/var/tmp/prism-peer-oidc-provider}
mkdir -p "$peer_dir"
if ! cmp -s bench/oidc-provider/package-lock.json "$peer_dir/package-lock.json" ||
  [ ! -d "$peer_dir/node_modules/oidc-provider" ]; then
  echo "bench-peer.sh: installing node-oidc-provider into $peer_dir" >&2
  cp bench/oidc-provider/package.json bench/oidc-provider/package-lock.json "$peer_dir/"
  (cd "$peer_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
cp bench/oidc-provider/server.mjs "$peer_dir/"

cargo build --release --locked --quiet -p prismd -p prism-bench
target=${CARGO_TARGET_DIR:-target}
exec "$target/release/prism-bench" --prismd "$target/release/prismd" \
  --scenarios ceiling,refresh,refresh-https,peer --wrk --peer-dir "$peer_dir" "$@"
