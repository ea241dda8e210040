"""The page, in headless Chromium driven by Playwright: submit a name, see it arrive live.

Chromium comes from the system (Debian's `chromium`); Playwright's own browser download is not
used. Without it the test is skipped, unless KAFKALOOP_REQUIRE_BROWSER is set (CI sets it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from tests.service_helpers import service

CHROMIUM = os.environ.get("KAFKALOOP_CHROMIUM") or shutil.which("chromium")
# Headless on a machine with no network but loopback: nothing in the background.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if CHROMIUM is None and os.environ.get("KAFKALOOP_REQUIRE_BROWSER"):
    raise RuntimeError("KAFKALOOP_REQUIRE_BROWSER is set but no chromium was found")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")


async def test_a_submitted_name_appears_live_for_everyone(
    kafka_bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    async with service(kafka_bootstrap, topic_name) as (url, _client), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            me, someone = await browser.new_page(), await browser.new_page()
            for page in (me, someone):
                await page.goto(url)
                await expect(page.locator("#status")).to_have_text("live", timeout=20_000)

            await me.fill("#name", "dora")
            await me.click("button[type=submit]")

            for page in (me, someone):
                await expect(page.locator("#items li.item").first).to_contain_text(
                    "dora", timeout=20_000
                )
                await expect(page.locator("#counts")).to_contain_text("dora: 1", timeout=20_000)
            await expect(me.locator("#name")).to_have_value("")
            await me.screenshot(path=str(tmp_path / "page.png"))
        finally:
            await browser.close()
    assert (tmp_path / "page.png").stat().st_size > 0
