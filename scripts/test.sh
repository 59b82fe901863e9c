#!/usr/bin/env bash
# Runs every test of the workspace. The end-to-end tests drive the real server with bash,
# curl and jq (the seed document's own lines) and with the official `prism` CLI (Node.js, npm),
# whose browser login runs in Debian's headless Chromium, so this installs those when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

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
