#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/fuzz_targets) for a while: briefly in CI, longer by hand.
#   scripts/fuzz.sh            30 s per target
#   scripts/fuzz.sh 600        10 min per target
#   scripts/fuzz.sh 60 request_body   one target
# Needs a nightly Rust toolchain (libFuzzer's instrumentation and AddressSanitizer); installs
# cargo-fuzz when missing. The committed seeds (fuzz/seeds) start each run; what the fuzzer
# finds goes to a scratch corpus outside the repository, and a crash is saved under
# fuzz/artifacts/<target>/ (ignored by git) with the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-30}"
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(token_format request_body access_token claim_matcher)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: no nightly toolchain ('rustup toolchain install nightly'); cargo-fuzz needs one" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi

# Instrumented builds share nothing with the normal ones; keep them apart and outside the clone.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-/var/tmp/prism-auth-fuzz-target}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  echo "fuzz.sh: $target for ${seconds}s" >&2
  # Only libFuzzer's summary is shown; on failure, the end of the whole output (a crash, or
  # a target that no longer builds).
  set +e
  cargo +nightly fuzz run --fuzz-dir fuzz "$target" "$scratch/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -max_len=8192 -timeout=10 -print_final_stats=1 \
    >"$scratch/$target.log" 2>&1
  status=$?
  set -e
  grep -E '^(INFO: seed corpus|Done [0-9]+ runs)' "$scratch/$target.log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$scratch/$target.log" >&2
    echo "fuzz.sh: $target failed (a crash is saved under fuzz/artifacts/$target/)" >&2
    exit "$status"
  fi
done
