#!/usr/bin/env bash
# aigw perf harness: one command on a fresh Debian machine.
#
#   perf/run.sh --quick        # smoke test, about 2 minutes
#   perf/run.sh                # 3 interleaved trials per scenario, 10 s runs
#   perf/run.sh --help         # every switch (peers, cache target, 2 shards, CPUs)
#
# Installs what is missing (nginx, wrk, python3 from Debian; skipped when
# present), builds the workspace in release, then hands over to harness.py,
# which starts everything on 127.0.0.1, runs the scenarios, stops what it
# started (also on failure and Ctrl-C) and writes perf/results/<time>.md.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "[perf] installing ${need[*]} from Debian" >&2
  sudo_=""
  [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  # nginx-light is enough (and what Debian 12 ships); fall back to nginx.
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" ||
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]/nginx-light/nginx}"
fi

# harness.py traps SIGINT/SIGTERM itself and stops every process it started;
# exec so the signal reaches it directly.
exec python3 perf/harness.py "$@"
