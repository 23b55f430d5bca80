#!/usr/bin/env bash
# API benchmark (docs/api.md); run by hand, not in CI.
#
# Builds the release binaries, starts target/release/tessera --api-socket with a VM
# created (not booted: vm.info then costs what it costs an orchestrator before boot),
# and runs target/release/api-bench (tests/src/bin/api-bench.rs) for GET vmm.ping and
# GET vm.info at 1 and 64 concurrent clients, each on its own keep-alive connection,
# BENCH_REQUESTS requests (20000) or BENCH_SECONDS seconds (5) per configuration,
# whichever comes first. Prints p50 and p99 latency (µs) and requests/s per
# configuration, then stops tessera with vmm.shutdown. The goal: p99 under 1 ms at 64
# clients.
#
# BENCH_CLIENT_THREADS (1) is api-bench's tokio threads: 1 leaves the other CPUs to
# tessera, which serves the API on one thread and answers vmm.ping and vm.info from the
# snapshot its control loop publishes. Client and server share the machine's CPUs, so
# the last line says where the CPU time of the runs went: tessera, api-bench, and
# everything else on the machine (other load makes the figures worse, not better).
# TESSERA_ARGS (empty) is added to tessera's command line, e.g. "--seccomp false" to
# compare against the filters' default.
# Exit status: 0 if every request was answered 200 and tessera exited 0.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

requests=${BENCH_REQUESTS:-20000}
seconds=${BENCH_SECONDS:-5}
threads=${BENCH_CLIENT_THREADS:-1}

cargo build --quiet --release --locked -p tessera-vmm --bin tessera -p tessera-tests --bin api-bench
kernel=$(scripts/guest-images.sh | tail -n 1)/vmlinuz
tessera=target/release/tessera
bench=target/release/api-bench

dir=$(mktemp -d /tmp/tessera-bench-api.XXXXXX)
sock=$dir/api.sock
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

# shellcheck disable=SC2086 # TESSERA_ARGS is a list of words
"$tessera" --api-socket "$sock" ${TESSERA_ARGS:-} 2>"$dir/tessera.log" &
pid=$!
for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { echo "bench-api: tessera made no socket" >&2; cat "$dir/tessera.log" >&2; exit 1; }

api() { curl -sS --fail-with-body --unix-socket "$sock" "$@"; }
api -X PUT http://localhost/api/v1/vm.create -d @- <<EOF
{"cpus": {"boot_vcpus": 2, "max_vcpus": 2},
 "memory": {"size": 0, "zones": [{"id": "m0", "size": 268435456}, {"id": "m1", "size": 268435456}]},
 "payload": {"kernel": "$kernel", "cmdline": "console=ttyS0"},
 "serial": {"mode": "Null"},
 "numa": [{"guest_numa_id": 0, "cpus": [0], "memory_zones": ["m0"]},
          {"guest_numa_id": 1, "cpus": [1], "memory_zones": ["m1"]},
          {"guest_numa_id": 2}, {"guest_numa_id": 3}],
 "generic_initiators": [{"device": "_host_bridge", "nodes": "2-3"}]}
EOF

rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || rev="$rev+changes"
echo "bench-api: tessera $rev ${TESSERA_ARGS:-} on $(nproc) CPUs ($(uname -r)), shared by tessera and the client; $requests requests or ${seconds}s per configuration; client threads $threads"
# CPU time in clock ticks: the machine's (busy, all) and tessera's, before and after.
ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
tessera_ticks() { awk '{print $14+$15}' "/proc/$pid/stat"; }
read -r busy0 all0 < <(ticks)
tessera0=$(tessera_ticks)
status=0
TIMEFORMAT='%U %S'
{ time "$bench" --socket "$sock" --path vmm.ping --path vm.info --clients 1 --clients 64 \
    --requests "$requests" --seconds "$seconds" --threads "$threads" >"$dir/bench.out"; } \
    2>"$dir/bench.time" || status=1
read -r busy1 all1 < <(ticks)
tessera1=$(tessera_ticks)
cat "$dir/bench.out"

# The summary table, from api-bench's lines.
awk '
    function field(key,    i) {
        for (i = 1; i <= NF; i++) if (index($i, key "=") == 1) return substr($i, length(key) + 2)
        return ""
    }
    BEGIN { printf "bench-api: %-20s %7s %9s %9s %9s %7s\n", "request", "clients", "p50_us", "p99_us", "req/s", "errors" }
    /^api-bench / {
        printf "bench-api: %-20s %7s %9s %9s %9s %7s\n", $2 " " $3, field("clients"), field("p50_us"), field("p99_us"), field("rps"), field("errors")
    }' "$dir/bench.out"
# Where the CPU time went while api-bench ran (api-bench's own from `time`).
hz=$(getconf CLK_TCK)
head -n -1 "$dir/bench.time" >&2 # api-bench's own messages, if any
read -r client_user client_sys < <(tail -n 1 "$dir/bench.time")
awk -v hz="$hz" -v busy=$((busy1 - busy0)) -v all=$((all1 - all0)) \
    -v tessera=$((tessera1 - tessera0)) -v client="$client_user $client_sys" '
    BEGIN {
        split(client, c, " "); client = c[1] + c[2]; busy /= hz; all /= hz; tessera /= hz
        other = busy - tessera - client; if (other < 0) other = 0
        printf "bench-api: CPU time during the runs: tessera %.1fs, api-bench %.1fs, other load %.1fs, idle %.1fs (of %.1fs)\n", tessera, client, other, all - busy, all
    }'

api -X PUT http://localhost/api/v1/vmm.shutdown
code=0
wait "$pid" || code=$?
pid=
if [ "$code" != 0 ]; then
    echo "bench-api: tessera exited with status $code" >&2
    cat "$dir/tessera.log" >&2
    status=1
fi
exit "$status"
