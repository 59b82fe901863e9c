#!/usr/bin/env bash
# Instructions per refresh exchange, counted by valgrind's callgrind: prismd's `/auth/refresh`
# and the ceiling's, user space only (the kernel's share is not counted). Unlike requests a
# second, the count does not move with whatever else the machine runs, so it can compare two
# builds on a busy machine; it says nothing about waiting, the kernel or the cores.
#
#   scripts/bench-instructions.sh            # release build; prints both counts and the ratio
#
# How: prismd runs under callgrind with instrumentation off, started and seeded by
# prism-bench (1,000 tokens, 16 connections, so that the standing cache is warm as in the
# default run); after the warm-up, instrumentation is switched on for 8 s, and the
# instructions counted are divided by the refresh requests prismd's own metrics counted in
# that window. The ceiling (prism-bench --serve-ceiling) runs the same way, driven by wrk,
# whose own report gives the requests. Needs valgrind, wrk and curl (Debian's packages;
# installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/debian-packages.sh
source scripts/lib/debian-packages.sh
install_missing bench-instructions.sh valgrind:valgrind wrk:wrk curl:curl

cargo build --release --locked --quiet -p prismd -p prism-bench
target=$(realpath "${CARGO_TARGET_DIR:-target}")/release
work=$(mktemp -d)
cleanup() { jobs -p | xargs -r kill 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

total_of() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}'; }

# prismd: prism-bench starts it through this wrapper.
cat > "$work/prismd" <<WRAP
#!/usr/bin/env bash
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$work/prismd.%p.out "$target/prismd" "\$@"
WRAP
chmod +x "$work/prismd"
"$target/prism-bench" --prismd "$work/prismd" --scenarios refresh --revocable 0 --tokens 1000 \
  --concurrency 16 --warmup 5s --duration 25s >"$work/bench.log" 2>&1 &
bench=$!
for _ in $(seq 1 300); do grep -q "refresh: warm-up" "$work/bench.log" && break; sleep 1; done
sleep 8
pid=$(pgrep -f "callgrind.*$target/prismd --data-dir" | head -1)
[ -n "$pid" ] || { echo "prismd under callgrind did not start:" >&2; cat "$work/bench.log" >&2; exit 1; }
address=$(ss -ltnp | grep "pid=$pid," | grep -o '127.0.0.1:[0-9]*' | head -1)
refreshes() { curl -s "http://$address/metrics" | awk '/^prismd_http_requests_total/ && /auth\/refresh/ {s += $2} END {print s + 0}'; }
before=$(refreshes)
callgrind_control -i on "$pid" >/dev/null
sleep 8
callgrind_control -i off "$pid" >/dev/null
after=$(refreshes)
wait "$bench" || { echo "prism-bench failed:" >&2; cat "$work/bench.log" >&2; exit 1; }
sleep 1
prismd_requests=$((after - before))
prismd_total=$(total_of "$(ls "$work"/prismd.*.out | head -1)")

# The ceiling, driven by wrk with one refresh body (it stores nothing, so one token is as good
# as many).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/ceiling.%p.out" \
  "$target/prism-bench" --serve-ceiling "127.0.0.1:$port" 2>/dev/null &
ceiling=$!
for _ in $(seq 1 100); do curl -s "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done
cat > "$work/refresh.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"refresh_token":"prt_bench_instructions_aaaaaaaaaaaaaaaaaaaaaaaaaaaa"}'
wrk.headers["Content-Type"] = "application/json"
LUA
wrk -t1 -c16 -d5s -s "$work/refresh.lua" "http://127.0.0.1:$port/auth/refresh" >/dev/null
callgrind_control -i on "$ceiling" >/dev/null
wrk -t1 -c16 -d8s -s "$work/refresh.lua" "http://127.0.0.1:$port/auth/refresh" >"$work/wrk.out"
callgrind_control -i off "$ceiling" >/dev/null
kill -TERM "$ceiling"
wait "$ceiling" 2>/dev/null || true
ceiling_requests=$(awk '/requests in/ {print $1}' "$work/wrk.out")
ceiling_total=$(total_of "$(ls "$work"/ceiling.*.out | head -1)")

python3 - "$prismd_total" "$prismd_requests" "$ceiling_total" "$ceiling_requests" <<'PY'
import sys
p_total, p_n, c_total, c_n = (int(x) for x in sys.argv[1:])
p, c = p_total / p_n, c_total / c_n
print(f"prismd  /auth/refresh: {p:,.0f} instructions a request ({p_n} requests)")
print(f"ceiling /auth/refresh: {c:,.0f} instructions a request ({c_n} requests)")
print(f"ceiling / prismd: {c / p:.3f}")
PY
