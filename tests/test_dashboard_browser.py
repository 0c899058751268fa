"""The dashboard in a real browser: headless Chromium driven by Playwright.

`pqrun dashboard --allow-actions` runs as a separate process, as a user would run it;
a worker runs in the test. The test loads the job list, sees a job appear after an
enqueue, opens a failed job, clicks Retry and sees it run. It takes a screenshot of the
overview on the way (PQRUN_UPDATE_SCREENSHOT=1 copies it to docs/dashboard.png).

Needs Chromium at /usr/bin/chromium (or $PQRUN_CHROMIUM; .ci/run installs the Debian
package) and Playwright's Python package (the e2e extra). No browser is downloaded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pqrun import Fail, JobContext, PgJobStore, Worker

from .dashboard_server import running_dashboard
from .helpers import QUICK

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("PQRUN_CHROMIUM", "/usr/bin/chromium")
WAIT_MS = 20_000

playwright_api = pytest.importorskip(
    "playwright.async_api",
    reason="Playwright is not installed: pip install --group e2e (CI installs it)",
)
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (CI installs it), "
    "or set PQRUN_CHROMIUM",
)


@pytest.fixture
def dashboard_url(dsn: str) -> Iterator[str]:
    """`pqrun dashboard --allow-actions` on a free port, for the test database."""
    with running_dashboard(dsn, "--allow-actions") as url:
        yield url


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 860})
            yield await context.new_page()
        finally:
            await browser.close()


async def test_a_job_appears_fails_and_runs_after_retry_in_the_browser(
    store: PgJobStore, dashboard_url: str, page: Any, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    fixed = asyncio.Event()

    async def build_report(ctx: JobContext) -> dict[str, Any]:
        if not fixed.is_set():
            raise Fail("the report template is missing")
        return {"pages": 12}

    release = asyncio.Event()

    async def charge_card(ctx: JobContext) -> None:
        raise Fail("card declined")

    async def export_data(ctx: JobContext) -> None:
        await release.wait()

    await store.enqueue_many(
        [{"job_type": "send_email", "payload": {"to": f"user{n}@example.com"}} for n in range(7)]
        + [{"job_type": "resize_image", "payload": {"image": n}} for n in range(3)]
    )
    handlers = {
        "build_report": build_report,
        "charge_card": charge_card,
        "export_data": export_data,
    }
    worker = Worker(store, handlers, concurrency=4, **QUICK)
    await worker.start()
    problems: list[str] = []  # script errors, CSP refusals, failed loads
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    try:
        # The list shows a job enqueued after the page was loaded, without a reload.
        await page.goto(f"{dashboard_url}/jobs")
        await expect(page.locator("#jobs")).to_contain_text("send_email", timeout=WAIT_MS)
        job_id = await store.enqueue("build_report", {"month": "2026-10"})
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        await expect(row).to_contain_text("build_report", timeout=WAIT_MS)
        await expect(row).to_contain_text("FAILED", timeout=WAIT_MS)

        # The failed job's page shows why; Retry runs it again, and the page sees it done.
        await row.locator("a").first.click()
        await expect(page.locator("#last-error")).to_contain_text(
            "the report template is missing", timeout=WAIT_MS
        )
        fixed.set()
        await page.locator('button[data-action="retry"]').click()
        await expect(page.locator("#notice")).to_contain_text("READY again", timeout=WAIT_MS)
        await expect(page.locator("#facts")).to_have_attribute(
            "data-status", "DONE", timeout=WAIT_MS
        )
        await expect(page.locator("#result")).to_contain_text('"pages": 12', timeout=WAIT_MS)

        # The overview: totals, queues, the worker, recent jobs.
        await store.enqueue("charge_card", {"order": 1})
        await store.enqueue("export_data", {"table": "orders"})
        await page.goto(f"{dashboard_url}/")
        await expect(page.locator("#queues")).to_contain_text("send_email", timeout=WAIT_MS)
        await expect(page.locator("#workers")).to_contain_text(worker.worker_id, timeout=WAIT_MS)
        await expect(page.locator("#recent")).to_contain_text("FAILED", timeout=WAIT_MS)
        await expect(page.locator("#recent")).to_contain_text("RUNNING", timeout=WAIT_MS)
        # Rates need two readings: the page's live refresh brings the second.
        await expect(page.locator("#totals")).to_contain_text("/s", timeout=WAIT_MS)
        shot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)
    finally:
        release.set()
        await worker.stop()
    assert problems == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("PQRUN_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")


async def test_a_phone_a_dark_scheme_and_the_job_id_box(
    store: PgJobStore, conn: Any, dashboard_url: str, page: Any, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    long_type = "reports.monthly.generate_the_consolidated_statement_for_every_region"
    await store.enqueue_many([{"job_type": long_type, "payload": {"n": n}} for n in range(3)])
    failed = await conn.fetchval(
        "INSERT INTO jobs (job_type, status, attempts, last_error, finished_at) "
        "VALUES ($1, 'FAILED', 5, $2, now()) RETURNING id",
        long_type,
        "ValueError: " + "x" * 400,
    )
    browser = page.context.browser
    phone = await browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    try:
        small = await phone.new_page()
        for path in ("/", "/jobs", f"/jobs/{failed}"):
            await small.goto(f"{dashboard_url}{path}")
            await expect(small.locator("main")).to_contain_text(long_type, timeout=WAIT_MS)
            # Nothing wider than the screen: no sideways scrolling of the page.
            widths = await small.evaluate(
                "[document.documentElement.scrollWidth, window.innerWidth]"
            )
            assert widths[0] <= widths[1], (path, widths)
            # Dark, as the system asks.
            background = await small.evaluate("getComputedStyle(document.body).backgroundColor")
            red, green, blue = (int(part) for part in background[4:-1].split(",")[:3])
            assert red + green + blue < 150, background
        await small.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    finally:
        await phone.close()

    # The job-id box in the header: a job's page; something else: a notice.
    await page.goto(f"{dashboard_url}/")
    await page.locator("#jump input").fill(str(failed))
    await page.locator("#jump input").press("Enter")
    await expect(page).to_have_url(f"{dashboard_url}/jobs/{failed}", timeout=WAIT_MS)
    await expect(page.locator("main")).to_contain_text("ValueError", timeout=WAIT_MS)
    await page.locator("#jump input").fill("not a number")
    await page.locator("#jump button").click()
    await expect(page.locator("#notice")).to_contain_text("not a job id", timeout=WAIT_MS)


async def test_two_ticked_rows_are_retried_after_a_confirmation(
    store: PgJobStore, conn: Any, dashboard_url: str, page: Any, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    failed = [
        await conn.fetchval(
            "INSERT INTO jobs (job_type, status, attempts, last_error, finished_at) "
            "VALUES ('charge_card', 'FAILED', 5, 'card declined', now()) RETURNING id"
        )
        for _ in range(3)
    ]
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    await page.goto(f"{dashboard_url}/jobs?status=FAILED")
    for job_id in failed[:2]:
        await page.locator(f'tr[data-job-id="{job_id}"] input[type=checkbox]').check()
    # The list refreshes itself (a job failed meanwhile shows up) and keeps the ticks.
    newer = await conn.fetchval(
        "INSERT INTO jobs (job_type, status, finished_at) "
        "VALUES ('charge_card', 'FAILED', now()) RETURNING id"
    )
    await expect(page.locator(f'tr[data-job-id="{newer}"]')).to_be_visible(timeout=WAIT_MS)
    for job_id in failed[:2]:
        box = page.locator(f'tr[data-job-id="{job_id}"] input[type=checkbox]')
        await expect(box).to_be_checked()
    await page.screenshot(path=str(tmp_path / "dashboard-jobs.png"), full_page=True)
    await page.locator('button[data-bulk="retry"]').click()
    await expect(page.locator("#confirm-count")).to_have_attribute("data-count", "2")
    await expect(page.locator("h2").first).to_contain_text("Retry 2 jobs?")
    await page.screenshot(path=str(tmp_path / "dashboard-confirm.png"), full_page=True)
    assert [await status(conn, i) for i in failed] == ["FAILED"] * 3  # nothing moved yet
    await page.locator('button[data-action="confirm"]').click()
    await expect(page.locator("#bulk-result")).to_contain_text("2 jobs retried.", timeout=WAIT_MS)
    assert [await status(conn, i) for i in failed] == ["READY", "READY", "FAILED"]
    assert await status(conn, newer) == "FAILED"
    # The one left FAILED, with the errors of its attempts (as a worker writes them).
    await conn.execute(
        "UPDATE jobs SET error_history = (SELECT jsonb_agg(jsonb_build_object("
        "'attempt', g, 'at', now() - (5 - g) * interval '7 minutes', 'worker', 'web-1-4242',"
        "'outcome', CASE WHEN g = 5 THEN 'failed' ELSE 'retried' END,"
        "'error', 'CardDeclined: card declined (attempt ' || g || ')')) "
        "FROM generate_series(1, 5) AS g) WHERE id = $1",
        failed[2],
    )
    await page.goto(f"{dashboard_url}/jobs/{failed[2]}")
    await expect(page.locator("#attempts tbody tr")).to_have_count(5, timeout=WAIT_MS)
    await expect(page.locator("#attempts tbody tr").first).to_contain_text("attempt 5")
    await page.screenshot(path=str(tmp_path / "dashboard-job.png"), full_page=True)
    assert problems == []
    if os.environ.get("PQRUN_UPDATE_SCREENSHOT") == "1":
        for name in ("dashboard-jobs.png", "dashboard-confirm.png", "dashboard-job.png"):
            shutil.copyfile(tmp_path / name, ROOT / "docs" / name)


async def status(conn: Any, job_id: int) -> str:
    found: str = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
    return found


async def test_a_job_types_page_draws_its_charts_in_light_and_dark_and_on_a_phone(
    store: PgJobStore, conn: Any, dashboard_url: str, page: Any, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    # A day of one type's minutes: a wave of runs, a burst of failures, a backlog.
    await conn.execute(
        "INSERT INTO job_type_minutes (job_type, minute, done, failed, retried, run_ms_sum, "
        "                              run_ms_buckets, ready_depth) "
        "SELECT 'send_email', date_trunc('minute', now()) - m * interval '1 minute', "
        "       (60 + 40 * sin(m / 30.0))::int, CASE WHEN m BETWEEN 20 AND 25 THEN 9 ELSE 0 END, "
        "       m % 3, 2400, ARRAY[0,1,4,9,20,15,8,2,1,0,0,0,0,0,0,0,0,0,0,0,0,0], "
        "       (200 + 150 * cos(m / 50.0))::int "
        "FROM generate_series(0, 1440) AS m"
    )
    await conn.execute(
        "INSERT INTO job_type_minutes (job_type, minute, ready_depth) "
        "SELECT '', date_trunc('minute', now()) - m * interval '1 minute', 400 "
        "FROM generate_series(0, 1440) AS m"
    )
    problems: list[str] = []  # script errors, CSP refusals, failed loads
    browser = page.context.browser
    fills: dict[str, str] = {}
    for name, viewport, scheme in (
        ("desktop", {"width": 1280, "height": 900}, "light"),
        ("phone", {"width": 390, "height": 844}, "dark"),
    ):
        context = await browser.new_context(viewport=viewport, color_scheme=scheme)
        try:
            tab = await context.new_page()
            tab.on("pageerror", lambda error: problems.append(str(error)))
            tab.on(
                "console",
                lambda message: problems.append(message.text) if message.type == "error" else None,
            )
            # Reached from the overview's Queues table, as an operator would.
            await store.enqueue("send_email")
            await tab.goto(f"{dashboard_url}/")
            await tab.locator("#queues a", has_text="send_email").click()
            await expect(tab.locator("#job-type")).to_have_text("send_email", timeout=WAIT_MS)
            for chart in ("throughput", "failures", "depth"):
                for window in ("hour", "day"):
                    svg = tab.locator(f"#{window}-{chart} svg")
                    await expect(svg).to_be_visible(timeout=WAIT_MS)
                    box = await svg.bounding_box()
                    assert box is not None
                    assert box["height"] > 60, (name, window, chart, box)
            assert await tab.locator("#day-throughput rect").count() == 96
            widths = await tab.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert widths[0] <= widths[1], (name, widths)
            fills[scheme] = await tab.evaluate(
                "getComputedStyle(document.querySelector('#hour-throughput rect')).fill"
            )
            await tab.screenshot(path=str(tmp_path / f"type-{name}.png"), full_page=True)
        finally:
            await context.close()
    assert problems == []
    # The bars take the scheme's colour from the stylesheet (no inline style is allowed).
    assert fills["light"] != fills["dark"]
    if os.environ.get("PQRUN_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "type-desktop.png", ROOT / "docs" / "dashboard-type.png")


async def test_a_job_type_is_paused_with_a_reason_and_resumed_in_the_browser(
    store: PgJobStore, dashboard_url: str, page: Any, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    await store.enqueue("send_email")
    await page.goto(f"{dashboard_url}/types/send_email")
    await page.locator('#pause input[name="reason"]').fill("incident 42: relay down")
    await page.locator('button[data-action="pause"]').click()
    await expect(page.locator("#notice")).to_contain_text("paused", timeout=WAIT_MS)
    await expect(page.locator("#paused-state")).to_contain_text("incident 42: relay down")
    assert [(p["job_type"], p["reason"]) for p in await store.paused_types()] == [
        ("send_email", "incident 42: relay down")
    ]
    # The overview's Queues table marks the type, with the reason as the tooltip.
    await page.goto(f"{dashboard_url}/")
    badge = page.locator("#queues .s-paused")
    await expect(badge).to_have_attribute("title", "paused: incident 42: relay down")
    # On a phone the form and the state fit the width.
    context = await page.context.browser.new_context(viewport={"width": 390, "height": 844})
    try:
        phone = await context.new_page()
        await phone.goto(f"{dashboard_url}/types/send_email")
        await expect(phone.locator("#paused-state")).to_be_visible(timeout=WAIT_MS)
        widths = await phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], widths
    finally:
        await context.close()
    await page.goto(f"{dashboard_url}/types/send_email")
    await page.screenshot(path=str(tmp_path / "type-paused.png"), full_page=True)
    await page.locator('button[data-action="resume"]').click()
    await expect(page.locator("#notice")).to_contain_text("resumed", timeout=WAIT_MS)
    await expect(page.locator('button[data-action="pause"]')).to_be_visible()
    assert await store.paused_types() == []
    assert problems == []
