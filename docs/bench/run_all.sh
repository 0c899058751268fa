#!/usr/bin/env bash
# Every number in docs/benchmarks.md, from one run on one machine.
#
# Usage: bash docs/bench/run_all.sh [ADMIN_DSN] [--autovacuum]
#   ADMIN_DSN     a superuser DSN on the server to measure (default: local, user postgres)
#   --autovacuum  turn the server's autovacuum on (naptime 5s) for the run, and back after
#
# Needs: pqrun installed, `pip install pgqueuer` for the peer, node >= 18 and npm for
# Graphile Worker (its script installs it on first use), pgbench and psql, and the shared
# benchmark scripts (../shared/bench: the raw-SQL floor, PGQueuer's and Graphile's drains).
# Creates and drops the databases bench_floor, bench_peer, bench_graphile and bench_pqrun.
set -euo pipefail
cd "$(dirname "$0")/../.."
admin=${1:-postgresql://postgres@127.0.0.1:5432/postgres}
server=${admin%/*}
shared=../shared/bench

if [ "${2:-}" = "--autovacuum" ]; then
    psql -q "$admin" -c "ALTER SYSTEM SET autovacuum = on" \
        -c "ALTER SYSTEM SET autovacuum_naptime = '5s'" -c "SELECT pg_reload_conf()" >/dev/null
    trap 'psql -q "$admin" -c "ALTER SYSTEM RESET autovacuum" \
        -c "ALTER SYSTEM RESET autovacuum_naptime" -c "SELECT pg_reload_conf()" >/dev/null' EXIT
fi

for db in bench_floor bench_peer bench_graphile bench_pqrun; do
    psql -q "$admin" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
done

echo "== machine"
echo "cpus: $(nproc); memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
psql -At "$admin" -c "SELECT version()" \
    -c "SELECT string_agg(name || '=' || setting, ', ') FROM pg_settings WHERE name IN \
        ('fsync', 'synchronous_commit', 'shared_buffers', 'autovacuum', 'autovacuum_naptime')"
python -c "import sys, pqrun; print('python', sys.version.split()[0], 'pqrun', pqrun.__version__)"

for round in 1 2 3; do
    echo "== drain, round $round"
    bash "$shared/floor.sh" "$server/bench_floor" 100 2 10 | tail -1
    python "$shared/peer_pgqueuer_drain.py" "$server/bench_peer" | tail -1
    # Graphile Worker with the tuning its performance docs give (one JSON line: rate,
    # client and server CPU microseconds per job).
    bash "$shared/peer_graphile/run.sh" drain "$server/bench_graphile" --jobs 20000 \
        --concurrency 24 --pool 25 --local-queue 500 --batch-delay 0 | tail -1
    # On each event loop (--loop uvloop needs pip install 'pqrun[uvloop]').
    for loop in asyncio uvloop; do
        python -m pqrun bench --loop $loop --dsn "$server/bench_pqrun" --mode drain \
            | grep -E "event loop|jobs_per_s|cpu"
    done
    # Finished jobs deleted as they complete instead of kept DONE (an opt-in).
    echo "delete_done:"
    WORKER_DELETE_DONE=true python -m pqrun bench --loop uvloop --dsn "$server/bench_pqrun" \
        --mode drain | grep -E "jobs_per_s|cpu"
done

echo "== I/O-bound drain: handlers sleep 10 ms, concurrency 50 (ceiling 5,000 jobs/s)"
for loop in asyncio uvloop asyncio uvloop; do
    python -m pqrun bench --loop $loop --dsn "$server/bench_pqrun" --mode drain --sleep-ms 10 \
        --concurrency 50 | grep -E "event loop|jobs_per_s|of_ceiling"
done

echo "== continuous, 60 s"
python docs/bench/peer_pgqueuer_continuous.py "$server/bench_peer" --seconds 60 | tail -1
python -m pqrun bench --dsn "$server/bench_pqrun" --mode continuous --seconds 60

echo "== latency, bulk enqueue, big table, memory"
python -m pqrun bench --dsn "$server/bench_pqrun" --mode latency
python -m pqrun bench --dsn "$server/bench_pqrun" --mode bulk
python -m pqrun bench --dsn "$server/bench_pqrun" --mode bigtable
python -m pqrun bench --dsn "$server/bench_pqrun" --mode drain --jobs 100000

for db in bench_floor bench_peer bench_graphile bench_pqrun; do
    psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true
done
