#!/usr/bin/env bash
# Instructions per request inside the request pipeline, by callgrind
# (`perf/profile.sh --callgrind --pipeline-only`), for gateway set-ups side by
# side: what a pipeline stage costs in work done, which the machine's noise
# barely moves (throughput on a shared VM moves ±15% between runs of the same
# code; these counts usually repeat within about 2%, but the executor's
# timer and poll work depends on when the mock answers, and on a busy
# machine one set-up moved 10% between back-to-back runs of one binary: run
# twice, and compare stages within one run). User space only.
# Work is not time: a stage that touches more memory costs more time than
# its instructions say (see perf/README.md), so the bars stay on throughput;
# this is the check that does not need quiet hours.
#
#   perf/instructions.sh                    # pass, log, miss, hit, limits
#   perf/instructions.sh pass miss          # a subset; the first is the base
#   perf/instructions.sh --no-build --requests 2000 pass limits
#
# Set-ups (1 shard; the log off unless named):
#   pass    pass-through
#   log     pass-through with the request log on (its thread is not counted:
#           this is the shard's share of logging)
#   miss    the cache on, every request a new prompt (each stored)
#   hit     the cache on, every request one of 64 prompts seen before
#   limits  a gateway key, a `requests` and a `total_tokens` rate limit and a
#           budget, all set high enough never to refuse
#   limitslog  as limits, with the request log on (compare with log)
# Each runs perf/profile.sh --callgrind; the table goes to stdout and to
# perf/results/instructions-<time>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/perf/work/instructions
RESULTS=$ROOT/perf/results

build=1; requests=1000; setups=()
while [ $# -gt 0 ]; do
  case $1 in
    --no-build) build=0 ;;
    --requests) requests=$2; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    pass|log|miss|hit|limits|limitslog) setups+=("$1") ;;
    *) echo "unknown argument $1 (set-ups: pass log miss hit limits limitslog)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#setups[@]} -gt 0 ] || setups=(pass log miss hit limits)
if [ "$build" = 1 ]; then cargo build --release --workspace; fi
mkdir -p "$WORK" "$RESULTS"

# The limits set-up's gateway key (perf/limits.toml): a fixed test secret
# and its SHA-256.
secret=sk-aigw-$(printf '5%.0s' $(seq 64))
sha=$(printf '%s' "$secret" | sha256sum | cut -d' ' -f1)
nolog=$'[logs]\nenabled = false\n'
cache=$'[cache]\nenabled = true\nsize = "64MiB"\n'

declare -A ir
for s in "${setups[@]}"; do
  toml=$WORK/$s.toml; args=()
  case $s in
    pass) printf '%s' "$nolog" > "$toml" ;;
    log) : > "$toml" ;;
    miss) printf '%s%s' "$cache" "$nolog" > "$toml" ;;
    hit) printf '%s%s' "$cache" "$nolog" > "$toml"
         args=(--load-arg --hit-ratio --load-arg 1 --load-arg --pool-size --load-arg 64) ;;
    limits)
      { sed "s/{sha}/$sha/" perf/limits.toml; printf '%s' "$nolog"; } > "$toml"
      args=(-H "aigw-authorization: Bearer $secret") ;;
    limitslog)
      sed "s/{sha}/$sha/" perf/limits.toml > "$toml"
      args=(-H "aigw-authorization: Bearer $secret") ;;
  esac
  echo "[instructions] $s" >&2
  perf/profile.sh --callgrind --pipeline-only --no-build --requests "$requests" --extra-toml "$toml" "${args[@]}" \
    > "$WORK/$s.out" 2> "$WORK/$s.err" || { cat "$WORK/$s.err" >&2; exit 1; }
  ir[$s]=$(awk '$1 == "shard" && $2 == "thread:" {print $5; exit}' "$WORK/$s.out")
  [ -n "${ir[$s]}" ] || { echo "no count for $s (see $WORK/$s.out)" >&2; exit 1; }
done

base=${setups[0]}
out=$RESULTS/instructions-$(date -u +%Y%m%dT%H%M%SZ).md
{
  echo "# Instructions per request in the pipeline (callgrind --pipeline-only, $requests requests after warm-up, $(git rev-parse --short HEAD))"
  echo
  echo "| set-up | Ir/request | vs $base |"
  echo "|---|---|---|"
  for s in "${setups[@]}"; do
    awk -v s="$s" -v a="${ir[$s]}" -v b="${ir[$base]}" \
      'BEGIN { printf "| %s | %d | %+.1f%% |\n", s, a, (a / b - 1) * 100 }'
  done
} | tee "$out"
echo "[instructions] wrote $out" >&2
