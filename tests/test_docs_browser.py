"""/docs in a real browser (Debian's chromium, driven by Playwright), offline, against the
app served by Hypercorn: every operation is listed in its tag's group, with its summary; a
description's Markdown is rendered; and "Try it out" on GET /healthz gets 200.

The Makefile installs chromium when it is missing; Playwright's own browser downloads are never
used. Without chromium the test is skipped, except with ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright

from bench.harness import Server

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def served_docs(tmp_path: Path) -> Iterator[Server]:
    if shutil.which(CHROMIUM) is None:
        message = f"no chromium at {CHROMIUM} (`make test` installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true: a failure")
        pytest.skip(message)
    url = f"sqlite+aiosqlite:///{tmp_path}/docs.db"  # /docs and /healthz use no table
    server = Server("docs", "service.app:app", {"DATABASE_URL": url}, tmp_path)
    try:
        server.wait_ready("/healthz")
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(120)
async def test_the_docs_page_lists_every_operation_and_tries_healthz(
    served_docs: Server,
) -> None:
    base = served_docs.base
    async with httpx.AsyncClient(base_url=base) as http:
        spec = (await http.get("/openapi.json")).json()
    operations = {
        (method.upper(), path) for path, methods in spec["paths"].items() for method in methods
    }
    groups = {
        (operation.get("tags", ["default"])[0], method.upper(), path, operation.get("summary"))
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    }
    requested: list[str] = []

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            await page.goto(f"{base}/docs")
            await page.locator(".opblock").first.wait_for()
            blocks = page.locator(".opblock-summary")
            listed = set()
            for index in range(await blocks.count()):
                block = blocks.nth(index)
                method = (await block.locator(".opblock-summary-method").inner_text()).strip()
                path = await block.locator(".opblock-summary-path").get_attribute("data-path")
                listed.add((method.upper(), path))
            shown = set()
            sections = page.locator(".opblock-tag-section")
            for index in range(await sections.count()):
                section = sections.nth(index)
                name = await section.locator("h3.opblock-tag").get_attribute("data-tag")
                blocks = section.locator(".opblock-summary")
                for number in range(await blocks.count()):
                    block = blocks.nth(number)
                    method = (await block.locator(".opblock-summary-method").inner_text()).strip()
                    path = await block.locator(".opblock-summary-path").get_attribute("data-path")
                    summary = await block.locator(".opblock-summary-description").inner_text()
                    shown.add((name, method.upper(), path, summary.strip()))

            statement = page.locator(
                ".opblock-get",
                has=page.locator('.opblock-summary-path[data-path="/statements/{statement_id}"]'),
            )
            await statement.locator(".opblock-summary").click()
            rendered = statement.locator(".opblock-description-wrapper code")
            await rendered.first.wait_for()
            codes = await rendered.all_inner_texts()

            healthz = page.locator(
                ".opblock-get", has=page.locator('.opblock-summary-path[data-path="/healthz"]')
            )
            await healthz.locator(".opblock-summary").click()
            await healthz.locator(".try-out__btn").click()
            await healthz.locator(".execute").click()
            status = healthz.locator(".live-responses-table tbody td.response-col_status").first
            await status.wait_for()
            answered = (await status.inner_text()).strip()
            body = await healthz.locator(".live-responses-table .microlight").first.inner_text()
        finally:
            await browser.close()

    assert listed == operations and len(operations) >= 16
    # Grouped by tag ("default" is what an operation without one would be under), each with
    # its summary, and a description's `code` rendered as code, not as literal backticks.
    assert shown == groups
    assert {name for name, *_ in shown} == {
        "Users",
        "Tokens",
        "Accounts",
        "Movements",
        "Statements",
        "Health",
    }
    assert {"pending", "ready", "failed"} <= set(codes)
    assert answered == "200"
    assert '"status": "ok"' in body
    # Offline: the page, its assets and the document all came from the app itself.
    assert requested and all(url.startswith(base) for url in requested)
