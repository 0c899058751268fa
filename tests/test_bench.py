"""`pqrun bench` runs every mode and reports sane numbers (tiny sizes: not a timing test)."""

from __future__ import annotations

import subprocess
import sys

from pqrun._bench import parser, run


async def test_every_mode_runs_and_reports(server_dsn: str) -> None:
    args = parser().parse_args(
        [
            "--dsn", server_dsn, "--jobs", "500", "--seconds", "2", "--samples", "5",
            "--done-rows", "2000", "--future-rows", "500",
        ]
    )  # fmt: skip
    lines: list[str] = []
    results = await run(args, say=lines.append)
    assert results["drain"]["jobs"] == 500
    assert results["drain"]["jobs_per_s"] > 0
    assert results["drain"]["peak_rss_mb"] > 0
    assert results["continuous"]["jobs"] > 0
    assert results["continuous"]["server_autovacuum"] in ("on", "off")
    for path in ("enqueue()", "SQL INSERT"):
        latency = results["latency"][path]
        assert 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"]
    assert results["bulk"]["jobs_per_call"] == 10_000
    assert "jobs_ready_pickup" in results["bigtable"]["plan"]
    assert "Sort" not in results["bigtable"]["plan"]
    assert any(line.startswith("drain:") for line in lines)


def test_bench_is_a_pqrun_command(server_dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pqrun", "bench", "--dsn", server_dsn, "--mode", "drain",
         "--jobs", "300"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "jobs: 300" in done.stdout
