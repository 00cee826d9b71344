#!/usr/bin/env bash
# Profile aigw (or the mock, or nginx) under load: a CPU flamegraph from
# `perf record`, or an instruction-level profile from callgrind where hardware
# counters are not available. See "Profiling" in perf/README.md for how to read them.
#
#   perf/profile.sh                        # perf: flamegraph of aigw, closed loop, 10 s
#   perf/profile.sh --rate 5000            # same at a fixed open-loop rate
#   perf/profile.sh --callgrind            # instructions per request, 1000 requests
#   perf/profile.sh --target mock          # profile aigw-mock instead (no aigw needed)
#   perf/profile.sh --target nginx         # profile nginx proxy_pass, for comparison
#   perf/profile.sh --callgrind --extra-toml limits.toml -H 'aigw-authorization: Bearer K'
#                                          # aigw with more config, requests with more headers
#   perf/profile.sh --callgrind --extra-toml cache.toml --load-arg --hit-ratio --load-arg 1
#                                          # any aigw-load flag, one word per --load-arg
#   perf/profile.sh --callgrind --pipeline-only
#                                          # count only inside the request pipeline
#                                          # (pipeline::handle and what it calls:
#                                          # not the executor, nor reading the head)
#
# Layout as in the harness: aigw-load + aigw-mock on CPU 0, the profiled
# server on CPU 1. Output: perf/results/profile-<target>-<time>.{svg,txt}.
# Installs linux-perf / valgrind from Debian when missing; the flamegraph
# needs inferno (`cargo install inferno`, done when missing unless --no-install)
# or Brendan Gregg's FlameGraph scripts on PATH; without either you still get
# the text report.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/perf/work/profile
RESULTS=$ROOT/perf/results
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release

target=aigw; seconds=10; rate=""; mode=perf; build=1; install=1
load_cpu=0; proxy_cpu=1; port_base=18200; callgrind_requests=1000; extra_toml=""; headers=(); load_extra=()
collect=()
while [ $# -gt 0 ]; do
  case $1 in
    --target) target=$2; shift ;;
    --seconds) seconds=$2; shift ;;
    --rate) rate=$2; shift ;;
    --callgrind) mode=callgrind ;;
    --requests) callgrind_requests=$2; shift ;;
    --pipeline-only) collect=(--toggle-collect='aigw::server::pipeline::handle*') ;;
    --no-build) build=0 ;;
    --no-install) install=0 ;;
    --load-cpu) load_cpu=$2; shift ;;
    --proxy-cpu) proxy_cpu=$2; shift ;;
    --extra-toml) extra_toml=$2; shift ;;
    -H|--header) headers+=(-H "$2"); shift ;;
    --load-arg) load_extra+=("$2"); shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
  shift
done
case $target in aigw|mock|nginx) ;; *) echo "--target is aigw, mock or nginx" >&2; exit 2 ;; esac

log() { echo "[profile] $*" >&2; }
apt_install() {
  local sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "$@"
}

if [ "$mode" = perf ] && ! command -v perf >/dev/null; then apt_install linux-perf; fi
if [ "$mode" = callgrind ] && ! command -v valgrind >/dev/null; then apt_install valgrind; fi
if [ "$target" = nginx ] && ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then apt_install nginx-light; fi
if [ "$mode" = perf ] && ! command -v inferno-flamegraph >/dev/null && ! command -v flamegraph.pl >/dev/null \
   && [ "$install" = 1 ]; then
  log "installing inferno (cargo install inferno) for the flamegraph; --no-install skips"
  cargo install --locked inferno >/dev/null 2>&1 || log "inferno did not install: text report only"
fi
if [ "$build" = 1 ]; then
  log "cargo build --release --workspace"
  cargo build --release --workspace
fi

mkdir -p "$WORK" "$RESULTS"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
base=$RESULTS/profile-$target-$stamp
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

# start NAME LOG CMD...: runs CMD (taskset execs it, so $! is the server's
# own pid), remembers the pid for cleanup.
start() {
  local name=$1 logf=$2; shift 2
  log "start $name: $*"
  "$@" >"$logf" 2>&1 < /dev/null &
  pids+=($!)
  last_pid=$!
}
wait_line() { # wait_line LOG TEXT PID
  for _ in $(seq 1 150); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || break
    sleep 0.1
  done
  echo "[profile] did not start: $(tail -3 "$1")" >&2; exit 1
}

mock_port=$((port_base + 1))
start aigw-mock "$WORK/mock.log" taskset -c "$load_cpu" "$TARGET_DIR/aigw-mock" \
  --listen "127.0.0.1:$mock_port" --cpus "$load_cpu" --no-capture
wait_line "$WORK/mock.log" "aigw-mock listening" "$last_pid"
mock_pid=$last_pid
model=mock/gpt-4o-mini
case $target in
  mock)
    # The mock alone: move it to the profiled CPU.
    taskset -a -p -c "$proxy_cpu" "$mock_pid" >/dev/null
    url=http://127.0.0.1:$mock_port/v1/chat/completions; server_pid=$mock_pid ;;
  aigw)
    port=$((port_base + 5))
    cat > "$WORK/aigw.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
shards = 1
data_dir = "$WORK/data"

[admin]
socket = "$WORK/admin.sock"

[providers.bench]
kind = "openai"
base_url = "http://127.0.0.1:$mock_port/v1"
EOF
    [ -n "$extra_toml" ] && cat "$extra_toml" >> "$WORK/aigw.toml"
    # A fresh request log per run: a large one from earlier runs slows every insert.
    rm -rf "$WORK/data"
    model=bench/gpt-4o-mini
    url=http://127.0.0.1:$port/v1/chat/completions
    if [ "$mode" = callgrind ]; then
      # One file per thread: the shard's count apart from the threads beside
      # it (under valgrind's slowness the stats thread's periodic work weighs
      # more per request than it does at full speed).
      start aigw "$WORK/aigw.log" taskset -c "$proxy_cpu" valgrind --tool=callgrind --separate-threads=yes "${collect[@]}" \
        --callgrind-out-file="$base.callgrind" "$TARGET_DIR/aigw" serve --config "$WORK/aigw.toml"
    else
      start aigw "$WORK/aigw.log" taskset -c "$proxy_cpu" "$TARGET_DIR/aigw" serve --config "$WORK/aigw.toml"
    fi
    wait_line "$WORK/aigw.log" "aigw listening" "$last_pid"
    server_pid=$last_pid ;;
  nginx)
    port=$((port_base + 2))
    mask=1$(printf '0%.0s' $(seq 1 "$proxy_cpu"))
    mkdir -p "$WORK"/nginx-tmp/{body,proxy,fastcgi,uwsgi,scgi}; chmod 777 "$WORK"/nginx-tmp/*
    sed -e "s#@WORK@#$WORK#g" -e "s#@CPU_MASK@#$mask#" -e "s#@MOCK_PORT@#$mock_port#" \
        -e "s#@PROXY_PORT@#$port#" -e "s#@STATIC_PORT@#$((port_base + 3))#" -e "s#@STATIC_BODY@#{}#" \
        "$ROOT/perf/nginx.conf.in" > "$WORK/nginx.conf"
    start nginx "$WORK/nginx.log" taskset -c "$proxy_cpu" "$(command -v nginx || echo /usr/sbin/nginx)" \
      -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
    sleep 0.5
    server_pid=$(pgrep -n -P "$last_pid")  # the worker
    url=http://127.0.0.1:$port/v1/chat/completions ;;
esac

load_args=(--url "$url" --model "$model" --cpus "$load_cpu" --quiet --max-error-rate 1 --cpu-pid "server=$server_pid" "${headers[@]}" "${load_extra[@]}")
if [ "$mode" = callgrind ]; then
  # A fixed request count at a gentle rate: callgrind runs ~50x slower.
  load_args+=(--rate 200 --connections 8 --warmup 0s --duration "$((callgrind_requests / 200))s" --timeout 30s)
else
  [ -n "$rate" ] && load_args+=(--rate "$rate")
  load_args+=(--warmup 2s --duration "${seconds}s")
fi

if [ "$mode" = perf ]; then
  log "load running; perf record -g on pid $server_pid for $seconds s"
  taskset -c "$load_cpu" "$TARGET_DIR/aigw-load" "${load_args[@]}" > "$base.load.txt" &
  load_pid=$!
  sleep 2 # warm-up, unmeasured
  # DWARF unwinding: release builds carry line tables (debug = 1) but no frame pointers.
  perf record -F 499 --call-graph dwarf,16384 -p "$server_pid" -o "$WORK/perf.data" -- sleep "$seconds" \
    2> "$WORK/perf-record.log" || { log "perf record failed: $(tail -2 "$WORK/perf-record.log")"; exit 1; }
  wait "$load_pid" || true
  # Flat: where the CPU went, by function. Call graph: who called it.
  perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio -g none > "$WORK/report.txt" 2>/dev/null || true
  awk '!/^#/ && NF { sub(/[ \t-]+$/, ""); print; if (++n == 60) exit }' "$WORK/report.txt" > "$base.txt"
  perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio -g caller,0.5,callee --percent-limit 2 \
    > "$base.callgraph.txt" 2>/dev/null || true
  if command -v inferno-collapse-perf >/dev/null; then
    perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "$target under load" > "$base.svg"
  elif command -v stackcollapse-perf.pl >/dev/null; then
    perf script -i "$WORK/perf.data" 2>/dev/null | stackcollapse-perf.pl | flamegraph.pl --title "$target under load" > "$base.svg"
  fi
else
  [ "$target" = aigw ] || { echo "--callgrind profiles aigw only" >&2; exit 2; }
  # Warm up (connections, first-use paths), then zero the counters so the
  # profile holds only the measured requests; dump before stopping.
  log "warm-up under callgrind"
  # With the measured run's own flags: a pool of prompts (--hit-ratio) is
  # seen before it is measured.
  taskset -c "$load_cpu" "$TARGET_DIR/aigw-load" --url "$url" --model "$model" --cpus "$load_cpu" --quiet "${headers[@]}" \
    "${load_extra[@]}" --max-error-rate 1 --rate 200 --connections 8 --warmup 0s --duration 1s --timeout 30s > /dev/null
  callgrind_control -z "$server_pid" > /dev/null
  log "load running under callgrind ($callgrind_requests requests)"
  taskset -c "$load_cpu" "$TARGET_DIR/aigw-load" "${load_args[@]}" > "$base.load.txt"
  callgrind_control -d "$server_pid" > /dev/null
  # The dump just taken: one file per thread (`<base>.callgrind.<n>-<thread>`).
  # callgrind writes each file's total as its `totals:` line.
  n=$(ls "$base.callgrind".*-* 2>/dev/null | sed 's/.*\.callgrind\.\([0-9]*\)-.*/\1/' | sort -n | tail -n 1)
  [ -n "$n" ] || { log "callgrind dump missing"; exit 1; }
  kill -TERM "$server_pid" 2>/dev/null || true
  total=0; shard=0; dump=""
  for f in "$base.callgrind.$n"-*; do
    ir=$(awk '$1 == "totals:" || $1 == "summary:" {print $2; exit}' "$f")
    total=$((total + ${ir:-0}))
    # The busiest thread is the shard (1 shard under --callgrind).
    if [ "${ir:-0}" -gt "$shard" ]; then shard=${ir:-0}; dump=$f; fi
  done
  requests=$(awk '$1 == "requests" {print $2; exit}' "$base.load.txt")
  callgrind_annotate "$dump" > "$WORK/annotate-flat.txt" 2>/dev/null || true
  callgrind_annotate --inclusive=yes "$dump" > "$WORK/annotate.txt" 2>/dev/null || true
  per() { echo $(( $1 / (${requests:-0} > 0 ? requests : 1) )); }
  { echo "instructions (Ir): $total for $requests requests => $(per "$total") Ir/request (after warm-up)"
    echo "shard thread: $shard => $(per "$shard") Ir/request"
    echo "callgrind file: $dump (the shard's; open with kcachegrind)"
    echo
    head -n 60 "$WORK/annotate.txt"; } > "$base.txt"
fi
log "load report: $base.load.txt"
log "profile:     $base.txt"
[ -f "$base.callgraph.txt" ] && log "call graph:  $base.callgraph.txt"
[ -f "$base.svg" ] && log "flamegraph:  $base.svg (open in a browser; click to zoom)"
head -40 "$base.txt"
