"""The dashboard in a real browser: live jobs, a failed job's traceback and logs, actions,
tokens, reconnection, bursts of events, keyboard and phone width."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.sync_api import expect

from acceptance.conftest import wait_for
from support.dashboard import QUEUE, Dashboard

pytestmark = pytest.mark.slow
expect.set_options(timeout=15_000)


def row(page: Any, job_id: str) -> Any:
    return page.locator(f'tbody tr[data-key="{job_id}"]')


def test_given_the_jobs_page_when_jobs_are_enqueued_then_they_appear_run_and_finish_without_reload(
        dash: Dashboard) -> None:
    # Given the jobs page, live, and a worker
    dash.start()
    dash.worker()
    page = dash.page("ui/#/jobs")
    expect(page.locator("#live")).to_have_text("live")
    page.evaluate("window.sameDocument = true")

    # When three jobs that take a second each are enqueued through the API
    ledger = str(dash.tmp / "ledger.txt")
    assert dash.client is not None
    jobs = [dash.client.enqueue("support.jobs:slow_record", ledger, 1.0, queue=QUEUE) for _ in range(3)]

    # Then each appears, is seen running, then finished, and the page never reloaded
    for job in jobs:
        expect(row(page, job["id"])).to_be_visible()
    expect(page.locator("tbody .status", has_text="started").first).to_be_visible()
    for job in jobs:
        expect(row(page, job["id"]).locator(".status")).to_have_text("finished")
    assert page.evaluate("window.sameDocument") is True
    dash.screenshot(page, "jobs")


def test_given_a_failed_job_when_found_by_text_and_opened_then_its_traceback_and_logs_are_shown(
        dash: Dashboard) -> None:
    # Given a job that printed three lines and then failed, among other jobs
    dash.start()
    dash.worker()
    assert dash.client is not None
    dash.client.enqueue("support.jobs:add_plain", 1, 2, queue=QUEUE)
    failed = dash.client.enqueue("support.jobs:noisy_failure", "invoice-17", queue=QUEUE, max_attempts=1)
    assert dash.client.wait(failed["id"], timeout=30)["status"] == "failed"

    # When it is searched for by text on the jobs page and opened
    page = dash.page("ui/#/jobs")
    page.fill("#f-text", "invoice-17")
    page.keyboard.press("Enter")
    expect(page.locator("tbody tr")).to_have_count(1)
    page.locator(f'a[href="#/jobs/{failed["id"]}"]').click()

    # Then its error, traceback and the lines it printed are on its page
    expect(page.locator("h1 .status")).to_have_text("failed")
    expect(page.locator(".execution .traceback")).to_contain_text("ValueError: invoice-17 could not be parsed")
    expect(page.locator(".execution pre.logs")).to_contain_text("invoice-17 step 2")
    expect(page.locator("pre.args")).to_contain_text("invoice-17")
    dash.screenshot(page, "job-failed")


def test_given_a_running_job_when_watched_then_its_logs_stream_and_abort_from_the_ui_ends_it_aborted(
        dash: Dashboard) -> None:
    # Given a job that prints a tick every 0.2 s for minutes, running
    dash.start()
    dash.worker()
    assert dash.client is not None
    job = dash.client.enqueue("support.jobs:ticker", 1000, 0.2, queue=QUEUE)
    page = dash.page(f"ui/#/jobs/{job['id']}")
    expect(page.locator("h1 .status")).to_have_text("started")

    # When its page is open, its log lines arrive as they are printed
    expect(page.locator("pre.logs")).to_contain_text("tick 3")
    expect(page.locator("pre.logs")).to_contain_text("tick 6")

    # And when Abort is pressed, the job ends aborted, on the page and in the API
    page.get_by_role("button", name="Abort").click()
    expect(page.locator("h1 .status")).to_have_text("aborted")
    assert dash.client.get(job["id"])["status"] == "aborted"
    expect(page.get_by_role("button", name="Retry")).to_be_visible()


def test_given_the_overview_when_a_queue_is_paused_and_resumed_by_keyboard_then_claims_stop_and_restart(
        dash: Dashboard) -> None:
    # Given the overview with queue ui known to the dispatcher and a worker serving it
    dash.start()
    dash.worker()
    assert dash.client is not None
    first = dash.client.enqueue("support.jobs:add_plain", 1, 2, queue=QUEUE)
    assert dash.client.wait(first["id"], timeout=30)["status"] == "finished"
    page = dash.page("ui/")
    pause = page.get_by_role("button", name=f"Pause queue {QUEUE}")

    # When its Pause button is focused and Enter pressed
    pause.focus()
    page.keyboard.press("Enter")

    # Then the queue shows paused, the API agrees, and a new job stays pending
    queue_row = row(page, QUEUE)
    expect(queue_row).to_contain_text("paused")
    assert [q for q in dash.client.queues() if q["name"] == QUEUE][0]["paused"] is True
    held = dash.client.enqueue("support.jobs:add_plain", 2, 3, queue=QUEUE)
    expect(queue_row.locator("td").nth(0)).to_have_text("1")     # pending
    time.sleep(1.0)
    assert dash.client.get(held["id"])["status"] == "pending"

    # And when resumed, the held job runs
    page.get_by_role("button", name=f"Resume queue {QUEUE}").click()
    assert dash.client.wait(held["id"], timeout=30)["status"] == "finished"
    expect(queue_row.locator("td").nth(0)).to_have_text("0")


def test_given_the_workers_page_when_a_worker_is_drained_then_it_exits_and_shows_stopped(dash: Dashboard) -> None:
    # Given a registered worker
    dash.start()
    worker = dash.worker()
    page = dash.page("ui/#/workers")
    drain = page.get_by_role("button", name=re.compile("^Drain worker "))
    expect(drain).to_have_count(1)

    # When Drain is pressed and confirmed
    page.once("dialog", lambda dialog: dialog.accept())
    drain.click()

    # Then the worker process exits cleanly and the page shows it stopped
    wait_for(lambda: not worker.alive(), 20, "the drained worker did not exit")
    assert worker.popen.returncode == 0
    expect(page.locator("tbody .status")).to_have_text("stopped")


def test_given_auth_when_the_dashboard_opens_then_it_asks_for_a_token_and_offers_only_allowed_actions(
        dash: Dashboard) -> None:
    # Given a dispatcher that requires tokens: one may read, one may administer
    reader, admin = "read-" + "r" * 30, "admin-" + "a" * 30
    tokens = dash.tokens_file([{"token": reader, "scopes": ["read"], "name": "viewer"},
                               {"token": admin, "scopes": ["admin"], "name": "ops"}])
    dash.start("--auth", "--tokens-file", tokens, token=admin)
    assert dash.client is not None
    dash.client.pause(QUEUE)

    # When the dashboard opens, it asks for a token; a wrong one is refused
    page = dash.page("ui/")
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    page.fill("#token-input", "tq_000000000000_wrong-token-value")
    page.keyboard.press("Enter")
    expect(page.locator("#token-error")).to_contain_text("refused")

    # Then with the read token it shows the queues but no action
    page.fill("#token-input", reader)
    page.keyboard.press("Enter")
    expect(dialog).to_be_hidden()
    expect(row(page, QUEUE)).to_contain_text("paused")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.get_by_role("button", name=f"Resume queue {QUEUE}")).to_have_count(0)

    # And with the admin token, the action is offered
    page.click("#token-button")
    page.click("#token-forget")
    expect(dialog).to_be_visible()
    page.fill("#token-input", admin)
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name=f"Resume queue {QUEUE}")).to_be_visible()


def test_given_a_live_page_when_the_dispatcher_restarts_then_it_reconnects_and_misses_no_event(
        dash: Dashboard) -> None:
    # Given the jobs page following a dispatcher, with no worker (jobs stay pending)
    dash.start()
    port = dash.port
    page = dash.page("ui/#/jobs")
    expect(page.locator("#live")).to_have_text("live")
    assert dash.client is not None
    before = dash.client.enqueue("support.jobs:add_plain", 1, 1, queue=QUEUE)
    expect(row(page, before["id"])).to_be_visible()

    # When the dispatcher stops, the page says so; it comes back on the same port and jobs are
    # enqueued at once, before the page has reconnected
    assert dash.dispatcher is not None
    dash.dispatcher.terminate()
    expect(page.locator("#live")).to_have_text("reconnecting…")
    dash.start(port=port)
    after = [dash.client.enqueue("support.jobs:add_plain", i, i, queue=QUEUE) for i in range(5)]

    # Then the page reconnects and shows every job enqueued meanwhile
    expect(page.locator("#live")).to_have_text("live")
    for job in after:
        expect(row(page, job["id"])).to_be_visible()
    assert page.evaluate("window.tqueuesDashboard.connects") >= 2


def test_given_a_burst_of_thousands_of_events_then_the_page_batches_its_redraws_and_keeps_up(
        dash: Dashboard) -> None:
    # Given the jobs page, live
    dash.start()
    page = dash.page("ui/#/jobs")
    expect(page.locator("#live")).to_have_text("live")
    assert dash.client is not None

    # When 3,000 jobs are enqueued in batches
    jobs = dash.client.enqueue_many([{"method": "support.jobs:add_plain", "args": [i, i], "queue": QUEUE}
                                     for i in range(3000)])

    # Then every event is applied, the newest job is shown first, the list is capped, and the
    # page redrew far fewer times than it received events
    wait_for(lambda: page.evaluate("window.tqueuesDashboard.events") >= 3000, 60, "the page fell behind the feed")
    expect(page.locator("tbody tr").first).to_have_attribute("data-key", jobs[-1]["id"])
    expect(page.locator("tbody tr")).to_have_count(500)
    counters = page.evaluate("window.tqueuesDashboard")
    assert counters["redraws"] * 10 < counters["events"], counters
    # and the page still answers at once
    page.click('nav a[data-nav="overview"]')
    expect(page.locator("h1")).to_have_text("Overview")


def test_given_a_phone_width_then_nothing_overflows_and_the_keyboard_reaches_every_section(dash: Dashboard) -> None:
    # Given a dispatcher with a worker and some finished jobs
    dash.start()
    dash.worker()
    assert dash.client is not None
    ids = [dash.client.enqueue("support.jobs:add_plain", i, i, queue=QUEUE)["id"] for i in range(5)]
    failed = dash.client.enqueue("support.jobs:noisy_failure", "x", queue=QUEUE, max_attempts=1)
    for ident in [*ids, failed["id"]]:
        dash.client.wait(ident, timeout=30)

    # When the overview is opened 390 px wide
    page = dash.page("ui/", width=390, height=844)
    expect(row(page, QUEUE)).to_be_visible()
    expect(page.locator("section", has_text="Workers").locator("tbody .status")).to_have_text("alive")

    # Then the page does not scroll sideways (wide tables scroll inside their panel)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    dash.screenshot(page, "overview-phone")

    # And the keyboard alone gets around: the skip link leads to the content, and from the
    # header Tab reaches Overview, then Jobs, which Enter opens
    page.locator(".skip").focus()
    expect(page.locator(".skip")).to_be_in_viewport()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    assert page.evaluate("location.hash") == ""
    page.locator(".brand").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Overview"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Jobs"
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Jobs")
    expect(page.locator('nav a[data-nav="jobs"]')).to_have_attribute("aria-current", "page")


def test_given_finished_and_failed_jobs_then_the_overview_charts_them_and_counts_per_queue(dash: Dashboard) -> None:
    # Given 20 finished and 2 failed jobs
    dash.start()
    dash.worker()
    assert dash.client is not None
    jobs = dash.client.enqueue_many([{"method": "support.jobs:add_plain", "args": [i, 1], "queue": QUEUE}
                                     for i in range(20)])
    jobs += [dash.client.enqueue("support.jobs:noisy_failure", f"bad-{i}", queue=QUEUE, max_attempts=1) for i in range(2)]
    for job in jobs:
        dash.client.wait(job["id"], timeout=30)

    # When the overview is opened at 1280x800
    page = dash.page("ui/")

    # Then the queue row counts them, the summary gives the failure rate, and the worker is listed
    queue_row = row(page, QUEUE)
    expect(queue_row.locator("td").nth(2)).to_have_text("2")      # failed
    expect(queue_row.locator("td").nth(3)).to_have_text("20")     # finished
    expect(page.locator("section", has_text="Throughput").locator("p")).to_contain_text("9.1% failure rate")
    expect(page.locator("section", has_text="Workers").locator("tbody tr")).to_have_count(1)
    dash.screenshot(page, "overview")
