"""A real browser against the example app: headless Chromium (Debian's
``chromium``, driven by Playwright) streams a run; the server cuts the
connection mid-run; the browser's own ``EventSource`` reconnects with
``Last-Event-ID``; the page ends with every chunk exactly once, in order."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fixtures_http import Served, serve_app
from sse_redis.tools.example_app import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHUNKS = 80


@pytest.fixture
def app_url(served: Served, redis_url: str, backend: str) -> str:
    """The example app on a free loopback port, in a thread of its own."""
    return serve_app(served, create_app(redis_url, backend=backend, chunks=CHUNKS, token_delay=0.02))


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        # Root (CI) cannot use Chromium's sandbox.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_eventsource_resumes_after_the_server_drops_it(browser, app_url: str) -> None:
    page = browser.new_page()
    try:
        page.goto(app_url)
        page.click("#start")
        page.wait_for_function("window.seen.length >= 20", timeout=15_000)
        page.click("#drop")  # the server cuts every open stream of the run
        page.wait_for_function("window.done === true", timeout=30_000)
        seen = page.evaluate("window.seen")
        opens = page.evaluate("window.opens")
        failure = page.evaluate("window.failure")
        assert failure is None
        assert opens >= 2, "the browser never reconnected"
        assert seen == list(range(1, CHUNKS + 1)), "chunks lost, repeated or out of order"
        assert "done" in page.inner_text("#status")
    finally:
        page.close()


def test_a_finished_run_answers_204_so_eventsource_stops(browser, app_url: str) -> None:
    page = browser.new_page()
    try:
        page.goto(app_url)
        page.click("#start")
        page.wait_for_function("window.done === true", timeout=30_000)
        run = page.evaluate("window.run")
        status = page.evaluate(
            f"""async (run) => (await fetch(run.stream_url, {{headers: {{"Last-Event-ID": "{CHUNKS}"}}}})).status""",
            run,
        )
        assert status == 204
    finally:
        page.close()


def test_stop_pressed_on_one_instance_stops_a_run_another_produces(browser, served: Served, redis_url, backend):
    """The page follows a run that instance A produces; its Stop request lands
    on instance B (another app on the same Redis, as behind a load balancer).
    The run's producer on A stops, and the page ends on the ``cancelled``
    terminal, every chunk before it once, in order."""
    import httpx

    secret = os.urandom(32)
    producing = serve_app(served, create_app(redis_url, backend=backend, chunks=400, token_delay=0.02, secret=secret))
    other = serve_app(served, create_app(redis_url, backend=backend, chunks=400, token_delay=0.02, secret=secret))
    page = browser.new_page()
    try:
        page.goto(producing)
        page.click("#start")
        page.wait_for_function("window.seen.length >= 10", timeout=15_000)
        run = page.evaluate("window.run")
        answer = httpx.post(f"{other}/runs/{run['run_id']}/cancel?token={run['token']}", timeout=10)
        assert answer.json() == {"cancelled": True}
        page.wait_for_function("window.done === true", timeout=15_000)
        seen = page.evaluate("window.seen")
        assert page.evaluate("window.cancelled") == "stopped from the page"
        assert seen == list(range(1, len(seen) + 1)), "chunks lost, repeated or out of order"
        assert len(seen) < 400, "the producer was not stopped"
        assert "stopped" in page.inner_text("#status")
    finally:
        page.close()
