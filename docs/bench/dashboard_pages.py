"""How long each page of the dashboard takes on a big table.

Fills the database (emptied first: use a scratch one) with 1,000,000 jobs (980,000
created over the last 8 days, 15,000 READY and 5,000 due in an hour, one job of a rare
type a week old) and a day of per-minute counts for 20 job types, then times 30
requests of each page in-process (httpx's ASGI transport: no network, no server): the
overview, the job list (plain, by status, by type, a rare type in a week-old time
range), the scheduled view, a job, a job type, and the confirmation of "retry all
failed". ``--no-cache`` reads the READY counts again for every request instead of
reusing the last second's (overview and job type pages), and the overview's numbers too.

Usage: python dashboard_pages.py DSN [--no-cache]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx

import pqrun
from pqrun._ui import web_overview, web_type

FILL = """
TRUNCATE jobs, job_type_minutes, job_workers RESTART IDENTITY;
INSERT INTO jobs (job_type, status, created_at, finished_at, duration_ms, attempts)
SELECT 'type_' || (g % 20), CASE WHEN g % 50 = 0 THEN 'FAILED' ELSE 'DONE' END,
       now() - (1 - g::float / 1000000) * interval '8 days',
       now() - (1 - g::float / 1000000) * interval '8 days' + interval '1 second',
       g % 700, 1
FROM generate_series(1, 980000) AS g;
INSERT INTO jobs (job_type) SELECT 'type_' || (g % 20) FROM generate_series(1, 15000) AS g;
INSERT INTO jobs (job_type, run_after)
SELECT 'type_3', now() + interval '1 hour' FROM generate_series(1, 5000) AS g;
UPDATE jobs SET job_type = 'rare' WHERE id = 125000;  -- created 7 days ago
INSERT INTO job_type_minutes
    (job_type, minute, done, failed, retried, run_ms_sum, run_ms_buckets, ready_depth)
SELECT 'type_' || t, date_trunc('minute', now()) - m * interval '1 minute',
       (600 + 400 * sin(m / 90.0))::int, (5 + 5 * cos(m / 37.0))::int, m % 4, 24000,
       ARRAY[0,5,20,60,120,200,150,40,10,3,1,0,0,0,0,0,0,0,0,0,0,0],
       (700 + 650 * sin(m / 200.0))::int
FROM generate_series(0, 19) AS t, generate_series(0, 1440) AS m;
INSERT INTO job_type_minutes (job_type, minute, ready_depth)
SELECT '', date_trunc('minute', now()) - m * interval '1 minute', 14000
FROM generate_series(0, 1440) AS m;
ANALYZE job_type_minutes;
"""


async def main(dsn: str, no_cache: bool) -> None:
    if no_cache:
        web_type.ACTIVE_CACHE_SECONDS = 0.0
        web_type.ACTIVE_COST_FACTOR = 0.0
        web_overview.OVERVIEW_CACHE_SECONDS = 0.0
        web_overview.OVERVIEW_COST_FACTOR = 0.0
    store = pqrun.PgJobStore(dsn)
    await store.setup()
    async with store.connection() as conn:
        await conn.execute(FILL)
        # As autovacuum or the workers' vacuumer leave a table this size: its visibility
        # map set, so counts through the indexes read no table pages.
        await conn.execute("VACUUM ANALYZE jobs")
    app = pqrun.dashboard(store, allow_actions=True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
        week_ago = (datetime.now(UTC) - timedelta(days=7, hours=1)).strftime("%Y-%m-%dT%H:%M")
        a_day_later = (datetime.now(UTC) - timedelta(days=6)).strftime("%Y-%m-%dT%H:%M")
        for path in (
            "/",
            "/jobs",
            "/jobs?status=FAILED",
            "/jobs?job_type=type_3",
            f"/jobs?job_type=rare&since={week_ago}&until={a_day_later}",
            "/jobs?view=scheduled",
            "/jobs/500000",
            "/types/type_3",
            "/jobs/confirm?action=retry&all=1&status=FAILED",
        ):
            for _ in range(3):  # warm: the pool, prepared statements, the page cache
                warm = await http.get(path)
                assert warm.status_code == 200, (path, warm.status_code, warm.text[:300])
            times = []
            for _ in range(30):
                began = time.perf_counter()
                response = await http.get(path)
                times.append((time.perf_counter() - began) * 1000)
            if "rare" in path:  # the week-old job is on the range's first page
                assert "/jobs/125000" in response.text, path
            print(
                f"{path}: median {statistics.median(times):.1f} ms, max {max(times):.1f} ms, "
                f"{len(response.content) // 1024} KiB"
            )
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], "--no-cache" in sys.argv[2:]))
