"""The web page in a real headless browser (Debian's chromium, driven by Playwright): it loads
without console errors, lists the served runs and the reports under --runs, and a side-by-side
Playground request shows the very text the API returns for each model."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import openai
import pytest

from tunelab.serve.api import ServerState, create_app
from tunelab.serve.engine import Scheduler
from tunelab.serve.server import BackgroundServer, load_adapters, plan_runs

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip
SHOWN = ["base", "lora_a", "prompt"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)",
)


@pytest.fixture(scope="module")
def server(method_runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("web-runs")
    for name in ("lora_a", "prompt", "full"):
        shutil.copytree(method_runs[name], root / "compare" / "runs" / name)
    (root / "compare" / "report.html").write_text("<h1>comparison report</h1>")
    adapters = load_adapters(plan_runs([root], {}, None))
    state = ServerState(adapters, Scheduler(adapters), roots=[root])
    with BackgroundServer(create_app(state)) as running:
        yield running


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.problems = []
        page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
        page.on("pageerror", lambda error: page.problems.append(str(error)))
        page.goto(server.url + "/")
        page.wait_for_selector("#run-table tbody tr[data-run]")
        yield page
        browser.close()


def test_page_lists_runs_and_reports_without_console_errors(page, server):
    rows = page.locator("#run-table tbody tr")
    assert [rows.nth(i).get_attribute("data-run") for i in range(rows.count())] == [
        "full", "lora_a", "prompt"]  # fmt: skip
    lora = page.locator("tr[data-run=lora_a]").inner_text()
    assert "lora" in lora and "builtin:reverse" in lora and "16,384" in lora
    assert page.locator("tr[data-run=lora_a] svg.curve").count() == 1
    link = page.locator("#reports a")
    assert link.inner_text() == "compare"
    report = httpx.get(server.url + link.get_attribute("href"))
    assert report.status_code == 200 and "comparison report" in report.text
    assert page.problems == []


def test_side_by_side_request_shows_what_the_api_returns(page, server):
    page.click("button[data-view=playground]")
    page.fill("#prompt", "reverse: abc")
    page.fill("#max_tokens", "8")
    page.fill("#no_repeat_ngram_size", "1")
    for box in page.locator(".model-choice input").all():
        box.set_checked(box.get_attribute("value") in SHOWN)
    page.click("#send")
    page.wait_for_function(
        f"document.querySelectorAll('.output[data-done]').length == {len(SHOWN)}"
    )
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    for name in SHOWN:
        reply = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "reverse: abc"}], max_tokens=8,
            extra_body={"no_repeat_ngram_size": 1},
        )  # fmt: skip
        panel = page.locator(f".output[data-model='{name}']")
        assert panel.locator(".text").text_content() == reply.choices[0].message.content, name
        assert "tok/s" in panel.locator(".stats").inner_text()
    assert '"no_repeat_ngram_size":1' in page.locator("#snippet").text_content()
    assert page.problems == []
