"""The web page in a real headless Chromium, served by `drg-ledger serve` over a demo store.

The commands a user types: `drg-ledger demo` builds the store, `drg-ledger token` makes an
auditor's token, `drg-ledger serve` serves it on a free loopback port. Debian's chromium,
driven by Playwright's Python package (never `playwright install`), loads the page, signs in,
moves the known-at moment across 2021-05-11 (the date input, then the slider) and sees the
figures change as the API says they do; it saves the screenshot the README shows
(docs/service.png). Every request the browser makes goes to the service itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("drg-ledger"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = ROOT / "docs" / "service.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(*args: str) -> Any:
    done = subprocess.run([CLI, *args, "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A demo store served on a free port, with an auditor's token."""
    if shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed under CI (.ci/run installs it with apt)")
        pytest.skip("chromium is not installed: apt-get install -y chromium")
    tmp = tmp_path_factory.mktemp("service-browser")
    url = f"sqlite:///{tmp / 'demo.db'}"
    demo = _run("demo", "--cases", "300", "--hospitals", "6", "--database-url", url)
    token = _run("token", "--tokens", str(tmp / "tokens.json"), "--role", "auditor", "--name", "e2e-auditor")["token"]
    port = _free_port()
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen([CLI, "serve", "--host", "127.0.0.1", "--port", str(port), "--tokens",
                             str(tmp / "tokens.json"), "--database-url", url], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "drg-ledger serve did not answer /healthz in 60 s"
            time.sleep(0.2)
        yield {"base": base, "token": token, "demo": demo, "log": tmp / "serve.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()


def _api(served: dict[str, Any], path: str, **params: Any) -> Any:
    r = httpx.get(served["base"] + path, params=params, headers={"Authorization": f"Bearer {served['token']}"},
                  timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _wait_ready(page: Any, known_at: str) -> None:
    page.wait_for_function(
        "k => document.body.dataset.state === 'ready' && document.body.dataset.knownAt === k", arg=known_at,
        timeout=60_000)


def _december(page: Any) -> dict[str, str]:
    row = page.locator("#months tbody tr").nth(11)
    return {"net_points": row.locator("td.net-points").inner_text(), "fund_due": row.locator("td.fund-due").inner_text(),
            "change": row.locator("td.change").inner_text()}


def _plain(figure: str) -> str:
    return figure.replace(",", "")


def test_the_page_redraws_as_known_across_the_catalogue_and_saves_the_screenshot(served: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    hospital = served["demo"]["balance"]["hospital_id"]  # the 3A/3B hospital the catalogue helps most
    requested: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.on("request", lambda r: requested.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{served['base']}/?lang=en&hospital={hospital}")
            page.fill("#token", served["token"])
            page.click("#use-token")
            _wait_ready(page, "now")
            assert page.locator("#whoami").inner_text().endswith("auditor (e2e-auditor)")
            assert page.locator("#hospital").input_value() == hospital

            # The day before the catalogue was issued (a date: the end of that day, China time).
            page.fill("#known-at-date", "2021-05-10")
            page.dispatch_event("#known-at-date", "change")
            _wait_ready(page, "2021-05-10")
            before = _december(page)
            api_before = _api(served, "/balance-series", hospital=hospital, year=2020, known_at="2021-05-10")
            assert _plain(before["net_points"]) == api_before["months"][11]["balance"]["net_points"]
            assert "2021-05-10" not in page.locator("#known-at-label").inner_text()  # on the moment before

            # One step of the slider: the catalogue's moment, 2021-05-11 00:00 China time.
            page.focus("#known-at-slider")
            page.keyboard.press("ArrowRight")
            moment = "2021-05-11T00:00:00+08:00"
            _wait_ready(page, moment)
            assert "high_tech_catalogue" in page.locator("#known-at-label").inner_text()
            after = _december(page)
            api_after = _api(served, "/balance-series", hospital=hospital, year=2020, known_at=moment)
            assert _plain(after["net_points"]) == api_after["months"][11]["balance"]["net_points"]
            assert after["net_points"] != before["net_points"] and after["fund_due"] != before["fund_due"]
            # The previous curve is kept, faint, and the change is shown exactly.
            assert "(previous)" in page.locator("#chart").inner_text()
            assert after["change"].startswith(("+", "-")) and after["change"] != "+0.00"
            clearing = _api(served, "/clearing", pool="panzhihua", year=2020, known_at=moment)
            row = page.locator(f"#clearing tbody tr[data-hospital='{hospital}'] td.clearing-amount")
            own = next(h for h in clearing["hospitals"] if h["hospital_id"] == hospital)
            assert _plain(row.inner_text()) == own["clearing_amount"]

            # A case's explanation on click.
            first_case = page.locator("#cases tbody tr", has_text="high_tech_catalogue").first
            case_id = first_case.get_attribute("data-case")
            first_case.click()
            page.wait_for_function("c => document.body.dataset.explained === c", arg=case_id, timeout=30_000)
            assert "high_tech_catalogue" in page.locator("#explanation").inner_text()

            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # A date after it gives the same figures as the moment itself.
            page.fill("#known-at-date", "2021-05-12")
            page.dispatch_event("#known-at-date", "change")
            _wait_ready(page, "2021-05-12")
            assert _december(page)["net_points"] == after["net_points"]

            # The language switch keeps the page's state.
            page.click("#lang-switch")
            page.wait_for_load_state()
            _wait_ready(page, "2021-05-12")
            assert page.title() == "DRG 点数法结算账本" and page.locator("#hospital").input_value() == hospital

            # The API docs render offline too.
            page.goto(f"{served['base']}/docs")
            page.wait_for_selector(".swagger-ui .information-container", timeout=30_000)
            assert "drg-ledger" in page.locator(".swagger-ui .info").inner_text()
            assert errors == []
        finally:
            browser.close()
    outside = [u for u in requested if not u.startswith(served["base"] + "/")]
    assert outside == [], outside
    assert SCREENSHOT.stat().st_size > 20_000
