#!/usr/bin/env bash
# Before and after, alternating, each run on a fresh database bench_split.
# Usage: bash docs/bench/split_drain.sh BEFORE_CHECKOUT AFTER_CHECKOUT [ROUNDS] [ADMIN_DSN]
set -euo pipefail
before=${1:?before checkout}; after=${2:?after checkout}; rounds=${3:-8}
admin=${4:-postgresql://postgres@127.0.0.1:5432/postgres}
script=$(cd "$(dirname "$0")" && pwd)/split_drain.py
one() {
    psql -q "$admin" -c "DROP DATABASE IF EXISTS bench_split" -c "CREATE DATABASE bench_split" >/dev/null 2>&1
    (cd /tmp && PYTHONPATH="$1/src" python "$script" "${admin%/*}/bench_split")
}
for round in $(seq 1 "$rounds"); do
    if [ $((round % 2)) = 1 ]; then b=$(one "$before"); a=$(one "$after")
    else a=$(one "$after"); b=$(one "$before"); fi
    echo "round $round before: ${b% *} jobs/s ${b#* } us/job | after: ${a% *} jobs/s ${a#* } us/job"
done
psql -q "$admin" -c "DROP DATABASE IF EXISTS bench_split" >/dev/null 2>&1
