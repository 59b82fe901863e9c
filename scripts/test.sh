#!/usr/bin/env bash
# Runs every test of the workspace. The end-to-end tests drive the real server with bash,
# curl and jq (the seed document's own lines) and with the official `prism` CLI (Node.js, npm),
# whose browser login runs in Debian's headless Chromium, so this installs those when missing.
#
# The store conformance suite also runs every storage test on PostgreSQL. It needs
# PRISM_TEST_POSTGRES_URL: a server and database where this user may CREATE DATABASE (each
# test creates and drops its own). When unset and a PostgreSQL answers on 127.0.0.1:5432, this
# uses postgres://postgres@127.0.0.1:5432/test; otherwise the PostgreSQL tests fail and say so.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PRISM_TEST_POSTGRES_URL:-}" ] && command -v pg_isready >/dev/null 2>&1 &&
  pg_isready -q -h 127.0.0.1 -p 5432; then
  export PRISM_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test
fi

missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if ((${#missing[@]})); then
  echo "test.sh: installing ${missing[*]} (needed by the end-to-end tests)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

exec cargo test --workspace --locked "$@"
