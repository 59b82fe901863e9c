#!/usr/bin/env bash
# Benchmarks the `prism` CLI's start-up: `prism me:token` (a stored, valid token: no network)
# and `prism me` (refresh-free GraphQL call to a local prismd over dev TLS), for our Rust binary
# and, when Node.js is present, the official npm client pinned in
# crates/prismd/tests/official-cli. Reports the median wall time and the peak RSS of each.
# Not a test: numbers depend on the machine. Installs nothing system-wide.
#
#   scripts/bench-cli.sh                 # builds release prism and prismd, 30 runs each
#   RUNS=50 OFFICIAL_RUNS=5 scripts/bench-cli.sh
#   PRISM_BIN=... PRISMD_BIN=... OFFICIAL_PRISM=... scripts/bench-cli.sh   # use existing builds
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-30}
OFFICIAL_RUNS=${OFFICIAL_RUNS:-10}
TARGET=${CARGO_TARGET_DIR:-target}
command -v python3 >/dev/null || { echo "bench-cli.sh needs python3" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "bench-cli.sh needs GNU time (/usr/bin/time, Debian package time)" >&2; exit 1; }

if [[ -z "${PRISM_BIN:-}" || -z "${PRISMD_BIN:-}" ]]; then
  packages=()
  [[ -z "${PRISM_BIN:-}" ]] && packages+=(-p prism)
  [[ -z "${PRISMD_BIN:-}" ]] && packages+=(-p prismd)
  cargo build --release --quiet "${packages[@]}"
fi
PRISM_BIN=${PRISM_BIN:-$TARGET/release/prism}
PRISMD_BIN=${PRISMD_BIN:-$TARGET/release/prismd}

work=$(mktemp -d)
server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# The official client, installed from the committed lock file into a scratch directory.
if [[ -z "${OFFICIAL_PRISM:-}" ]] && command -v npm >/dev/null; then
  scratch="$TARGET/tmp/official-cli-bench"
  if [[ ! -x "$scratch/node_modules/.bin/prism" ]]; then
    mkdir -p "$scratch"
    cp crates/prismd/tests/official-cli/package.json crates/prismd/tests/official-cli/package-lock.json "$scratch/"
    (cd "$scratch" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || true
  fi
  [[ -x "$scratch/node_modules/.bin/prism" ]] && OFFICIAL_PRISM="$scratch/node_modules/.bin/prism"
fi

# A local server over dev TLS.
"$PRISMD_BIN" --data-dir "$work/data" serve --listen 127.0.0.1:0 --dev-tls 2>"$work/log" &
server_pid=$!
for _ in $(seq 1 200); do grep -q "listening on" "$work/log" && break; sleep 0.05; done
url=$(grep -o "listening on https://[^ ]*" "$work/log" | head -1 | cut -d' ' -f3)
[[ -n "$url" ]] || { echo "prismd did not start:" >&2; cat "$work/log" >&2; exit 1; }
token=$("$PRISMD_BIN" --data-dir "$work/data" tokens create --email owner@localhost 2>/dev/null)

# One profile in the shared config file (both clients read the same format).
export HOME="$work/home" PRISMATIC_URL="$url" NODE_EXTRA_CA_CERTS="$work/data/ca.pem"
unset PRISM_ACCESS_TOKEN PRISM_REFRESH_TOKEN PRISM_PROFILE PRISM_CONFIG_FILE SSL_CERT_FILE
access=$(PRISM_REFRESH_TOKEN="$token" "$PRISM_BIN" me:token)
mkdir -p "$HOME/.config/prism" && chmod 700 "$HOME/.config/prism"
cat > "$HOME/.config/prism/config.yml" <<YAML
version: 1
defaultProfile: default
profiles:
  default:
    accessToken: $access
    expiresIn: 604800
    refreshToken: $token
    scope: openid profile email offline_access
    tokenType: Bearer
    prismaticUrl: $url
YAML
chmod 600 "$HOME/.config/prism/config.yml"

# Wall time from plain runs; peak RSS from separate runs under GNU time (`%M`), because a
# child forked from python inherits python's RSS high-water mark across exec.
measure() { # label runs command...
  python3 - "$@" <<'PY'
import os, statistics, subprocess, sys, tempfile, time
label, runs, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
walls, rss = [], []
with tempfile.NamedTemporaryFile() as out:
    for i in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"{label} failed: {proc.stderr.decode()}")
        timed = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out.name, *cmd],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i:  # the first run warms the page cache
            walls.append(wall * 1000)
            rss.append(int(open(out.name).read().split()[-1]) / 1024)
print(f"{label:<34} {statistics.median(walls):9.1f} ms {statistics.median(rss):8.1f} MiB {max(rss):8.1f} MiB  ({runs} runs)")
PY
}

echo "prism CLI benchmark: $(nproc) CPUs, server $url"
printf '%-34s %12s %12s %12s\n' "command" "median wall" "median RSS" "max RSS"
measure "prism me:token (ours)" "$RUNS" "$PRISM_BIN" me:token
measure "prism me (ours)" "$RUNS" "$PRISM_BIN" me
if [[ -n "${OFFICIAL_PRISM:-}" ]]; then
  measure "prism me:token (official)" "$OFFICIAL_RUNS" "$OFFICIAL_PRISM" me:token
  measure "prism me (official)" "$OFFICIAL_RUNS" "$OFFICIAL_PRISM" me
else
  echo "(official client not measured: no Node.js/npm, or its install failed)"
fi
