"""What the journeys do in the browser, as a patient would: sign in on the EHR's page,
go to a screen, check it with axe-core, take its screenshots."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Browser, BrowserContext, Page, expect

from servicekit.testing import eventually

from .stack import Stack

TIMEZONE = "America/Chicago"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 360, "height": 780}
# axe-core rules for WCAG 2.0, 2.1 and 2.2 at levels A and AA.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]


@asynccontextmanager
async def patient_page(
    browser: Browser, *, viewport: dict[str, int] = DESKTOP
) -> AsyncIterator[Page]:
    """A fresh browser profile in the patient's time zone; page errors fail the test."""
    context: BrowserContext = await browser.new_context(
        viewport=viewport,  # type: ignore[arg-type]
        timezone_id=TIMEZONE,
        locale="en-US",
        reduced_motion="reduce",
        bypass_csp=True,  # only so the test can inject axe-core; the page itself sets a CSP
        accept_downloads=True,
    )
    errors: list[str] = []
    page = await context.new_page()
    page.on("pageerror", lambda error: errors.append(f"{error}: {error.stack}"))
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        await context.close()
    assert not errors, errors


async def sign_in(page: Page, stack: Stack, patient: str) -> None:
    """Sign in through the EHR's sign-in page (authorization code + PKCE)."""
    await page.goto(stack.gateway_url + "/")
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{stack.sandbox.url}/auth/authorize*")
    await page.locator(f"input[name=patient][value='{patient}']").check()
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_text("Signed in as")).to_be_visible()
    await expect(page.locator("main .view h1")).to_be_visible()


async def open_screen(page: Page, stack: Stack, route: str) -> None:
    """Go to a screen by its address and wait until it has loaded."""
    await page.goto(f"{stack.gateway_url}/{route}")
    await expect(page.locator("main .loading")).to_have_count(0)
    await expect(page.locator("main .view h1")).to_be_visible()


async def serious_violations(page: Page, axe_source: str) -> list[dict[str, Any]]:
    """axe-core's critical and serious violations on the page as it is now."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.add_script_tag(content=axe_source)
    found: list[dict[str, Any]] = await page.evaluate(
        """async (tags) => {
            const result = await axe.run(document, { runOnly: { type: "tag", values: tags } });
            return result.violations.map((v) => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ")),
            }));
        }""",
        AXE_TAGS,
    )
    return [v for v in found if v["impact"] in ("critical", "serious")]


async def fits_width(page: Page) -> bool:
    """Nothing scrolls sideways (WCAG 1.4.10 reflow) at the page's width."""
    return bool(
        await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    )


async def screenshot(page: Page, folder: Path, name: str) -> None:
    """A full-page screenshot, named after the screen and the width."""
    width = page.viewport_size["width"] if page.viewport_size else 0
    await page.screenshot(path=str(folder / f"{name}-{width}px.png"), full_page=True)


async def patient_ready(
    stack: Stack, patient: str, path: str, check: Any, timeout: float = 120
) -> None:
    """Link the patient's account and wait until their imported history has arrived (the
    connector back-fills it after the first sign-in), through the gateway's API."""
    token = (
        await stack.sandbox.admin.post("/dev/patient-token", json={"patient": patient})
    ).json()["access_token"]
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        assert (await client.get("/v1/me")).status_code == 200

        async def arrived() -> bool:
            response = await client.get(path)
            return response.status_code == 200 and bool(check(response.json()))

        await eventually(arrived, timeout=timeout, interval=0.5)
