"""The patient portal in a real browser (Debian's Chromium through Playwright) on the whole
stack: every screen through the gateway's public API, checked by axe-core at desktop and
phone widths, and the patient's journeys end to end, live notices included.

Each journey uses its own demo patient (or data only it touches), so their order does not
matter. The sandbox's clinic runs in America/Chicago, as the patient's browser does here.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from .portal import (
    DESKTOP,
    PHONE,
    fits_width,
    open_screen,
    patient_page,
    patient_ready,
    screenshot,
    serious_violations,
    sign_in,
)
from .stack import Stack

# Starting the stack and the clinic's first slot sync take minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(900)]
CLINIC = ZoneInfo("America/Chicago")
LIVE = 90_000  # ms: events cross the EHR, the connector, Kafka and a service first

# A 1x1 PNG: the smallest real image messaging accepts (it checks the file's magic bytes).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

SCREENS = [
    ("home", "#/"),
    ("results", "#/results"),
    ("result-detail", "#/results/alice-a1c-3-dr"),
    ("health-summary", "#/health"),
    ("appointments", "#/appointments"),
    ("book", "#/appointments/book"),
    ("intake", "#/appointments/ehr-alice-appt-next/intake"),
    ("messages", "#/messages"),
    ("thread", "#/messages/th-alice-msg-1"),
    ("new-message", "#/messages/new"),
    ("symptom-check", "#/symptoms"),
    ("access-log", "#/access-log"),
    ("caregivers", "#/caregivers"),
]


def _has_results(body: dict[str, Any]) -> bool:
    return any(r["id"] == "alice-a1c-3-dr" for r in body["items"])


async def _alice_ready(stack: Stack) -> None:
    await patient_ready(stack, "demo-alice", "/v1/me/lab-results?limit=50", _has_results)
    await patient_ready(
        stack,
        "demo-alice",
        "/v1/me/appointments",
        lambda items: any(a["id"] == "ehr-alice-appt-next" for a in items),
    )
    await patient_ready(
        stack,
        "demo-alice",
        "/v1/me/threads",
        lambda items: any(t["id"] == "th-alice-msg-1" for t in items),
    )


async def test_every_screen_is_accessible_and_fits_a_phone(
    stack: Stack, browser: Browser, axe_source: str, screenshots: Path
) -> None:
    await _alice_ready(stack)
    for viewport, label in ((DESKTOP, "desktop"), (PHONE, "phone")):
        async with patient_page(browser, viewport=viewport) as page:
            await page.goto(stack.gateway_url + "/")
            await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
            assert await serious_violations(page, axe_source) == []
            await screenshot(page, screenshots, "sign-in")
            await sign_in(page, stack, "demo-alice")
            for name, route in SCREENS:
                await open_screen(page, stack, route)
                violations = await serious_violations(page, axe_source)
                assert violations == [], (name, label, violations)
                assert await fits_width(page), (name, label, "scrolls sideways")
                await screenshot(page, screenshots, name)
            # Keyboard: the skip link is the first stop and moves to the main content.
            await page.reload()
            await expect(page.locator("main .view h1")).to_be_visible()
            await page.keyboard.press("Tab")
            await expect(page.get_by_role("link", name="Skip to main content")).to_be_focused()
            # The sign-out is clear.
            await page.get_by_role("button", name="Sign out").click()
            await expect(page.locator("#signed-out-reason")).to_have_text("You have signed out.")


async def test_the_sign_in_page_offers_only_the_demo_patients(
    stack: Stack, browser: Browser, axe_source: str, screenshots: Path
) -> None:
    async with patient_page(browser) as page:
        await page.goto(stack.gateway_url + "/")
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(f"{stack.sandbox.url}/auth/authorize*")
        offered = await page.locator("input[name=patient]").evaluate_all(
            "inputs => inputs.map((i) => i.value)"
        )
        assert "demo-alice" in offered
        assert "canary" not in offered
        # The EHR's sign-in page is part of the journey: accessible too.
        assert await serious_violations(page, axe_source) == []
        await screenshot(page, screenshots, "ehr-sign-in")


async def test_a_patient_reads_a_result_with_its_explanation_and_trend(
    stack: Stack, browser: Browser
) -> None:
    await _alice_ready(stack)
    async with patient_page(browser) as page:
        await sign_in(page, stack, "demo-alice")
        await expect(page.locator("main h1")).to_have_text(
            re.compile(r"^Good (morning|afternoon|evening), Alice$")
        )
        await page.get_by_role("link", name="Test results", exact=True).click()
        row = page.locator("[data-report='alice-a1c-3-dr'] tbody tr").first
        await expect(row).to_contain_text("Hemoglobin A1c (HbA1c)")
        await expect(row).to_contain_text("6.8 %")
        await expect(row).to_contain_text("4 to 5.6 %")
        await expect(row.locator(".flag")).to_have_text("High")
        # Filter by test: only the HbA1c reports are left.
        await page.get_by_text("Filter by test or date").click()
        await page.get_by_label("Test", exact=True).select_option(label="Hemoglobin A1c (HbA1c)")
        await page.get_by_role("button", name="Show results").click()
        await expect(page.locator("#results-count")).to_have_text("3 results")
        await (
            page.locator("[data-report='alice-a1c-3-dr']")
            .get_by_role("link", name=re.compile("What this means"))
            .click()
        )
        await expect(page.locator("main h1")).to_have_text("Hemoglobin A1c (HbA1c)")
        await expect(page.locator(".explanation")).to_contain_text("average blood sugar")
        await expect(page.get_by_text("What a high result can mean")).to_be_visible()
        chart = page.get_by_role("img", name=re.compile("Hemoglobin A1c \\(HbA1c\\) over time"))
        await expect(chart).to_be_visible()
        await expect(chart.locator("circle")).to_have_count(3)
        table = page.locator("#trend-table tbody tr")
        await expect(table).to_have_count(3)
        await expect(table.nth(0)).to_contain_text("7.7 %")
        await expect(table.nth(2)).to_contain_text("6.8 %")


async def test_a_patient_books_reschedules_and_cancels(stack: Stack, browser: Browser) -> None:
    # The clinic's free times reach scheduling's cache from the EHR (the connector's slot
    # sync), earliest first: wait for the day after tomorrow, clear of the 24-hour rule.
    day = (datetime.now(CLINIC) + timedelta(days=2)).date()
    start = datetime.combine(day, time(0), CLINIC).isoformat()
    await patient_ready(
        stack,
        "demo-bob",
        f"/v1/slots?limit=20&start={quote(start)}",
        lambda body: len(body["items"]) >= 20,
        timeout=300,
    )
    async with patient_page(browser) as page:
        await sign_in(page, stack, "demo-bob")
        await page.get_by_role("link", name="Appointments", exact=True).click()
        await page.get_by_role("link", name="Book an appointment").click()
        # Search by clinician and date.
        clinician = page.get_by_label("Clinician")
        value = await clinician.locator("option").nth(1).get_attribute("value")
        assert value
        await clinician.select_option(value)
        await page.get_by_label("From which day?").fill(day.isoformat())
        await page.get_by_role("button", name="Find free times").click()
        slots = page.locator("button.slot")
        await expect(slots.first).to_be_visible()
        first_slot = await slots.first.get_attribute("data-slot")
        assert first_slot and first_slot.startswith(f"slot-{value}-")
        await slots.first.click()
        await page.get_by_label(re.compile("Why do you want to come")).fill("Asthma check")
        await page.get_by_role("button", name="Book this appointment").click()
        await expect(page.locator("#booked")).to_contain_text("is requested")
        # The clinic (the EHR) confirms it; a notice says so, the list shows it confirmed.
        await page.locator("#booked").get_by_role("link", name="See your appointments").click()
        item = page.locator("#upcoming li").filter(has=page.get_by_text("Status: Confirmed")).first
        await expect(item).to_be_visible(timeout=LIVE)
        appointment_id = await item.get_attribute("data-appointment")
        # Move it to a later time.
        await item.get_by_role("link", name=re.compile("Change the time")).click()
        await page.get_by_label("From which day?").fill(day.isoformat())
        await page.get_by_role("button", name="Find free times").click()
        later = page.locator("button.slot").nth(3)
        new_slot = await later.get_attribute("data-slot")
        await later.click()
        await page.get_by_role("button", name="Yes, move it").click()
        await expect(page.locator("#booked")).to_contain_text("move your appointment")
        await page.locator("#booked").get_by_role("link", name="See your appointments").click()
        moved = page.locator(f"#upcoming li[data-appointment='{appointment_id}']")

        async def settled() -> None:
            await expect(moved).to_contain_text("Status: Confirmed", timeout=LIVE)
            await expect(moved).not_to_contain_text("Moving to a new time", timeout=LIVE)

        await settled()
        assert new_slot != first_slot
        # Cancel it: the clinic's rule is explained before the patient confirms.
        await moved.get_by_role("button", name=re.compile("^Cancel")).click()
        await expect(moved.get_by_role("group")).to_contain_text("up to 24 hours before")
        await moved.get_by_role("button", name="Yes, cancel it").click()
        await expect(page.locator("#appointments-status")).to_contain_text("is cancelled")
        await expect(
            page.locator(f"#past li[data-appointment='{appointment_id}']")
        ).to_contain_text("Status: Cancelled", timeout=LIVE)


async def test_intake_shows_errors_next_to_the_fields_then_is_sent(
    stack: Stack, browser: Browser
) -> None:
    await _alice_ready(stack)
    async with patient_page(browser) as page:
        await sign_in(page, stack, "demo-alice")
        await open_screen(page, stack, "#/appointments/ehr-alice-appt-next/intake")
        # A question asked only after a "yes" (enableWhen), and then required.
        which = page.get_by_label(re.compile("Which medicines changed"))
        await expect(which).to_be_hidden()
        await page.locator("[data-link-id='medications-changed']").get_by_label("Yes").check()
        await expect(which).to_be_visible()
        await page.get_by_label(re.compile("Pain right now")).fill("lots")
        await page.get_by_role("button", name="Send to the clinic").click()
        summary = page.locator(".error-summary")
        await expect(summary).to_be_focused()
        reason = page.locator("[data-link-id='reason']")
        await expect(reason.locator(".field-error")).to_contain_text("Please answer")
        await expect(reason.locator("textarea")).to_have_attribute("aria-invalid", "true")
        await expect(page.locator("[data-link-id='pain'] .field-error")).to_contain_text(
            "whole number"
        )
        await expect(
            page.locator("[data-link-id='medications-which'] .field-error")
        ).to_be_visible()
        # Save a draft, come back, finish and send.
        await page.get_by_label(re.compile("main reason for your visit")).fill("Diabetes check-up")
        await page.get_by_label(re.compile("Pain right now")).fill("2")
        await page.get_by_role("button", name="Save and finish later").click()
        await expect(page.locator("#intake-status")).to_contain_text("Your answers are saved")
        await page.reload()
        await expect(page.get_by_label(re.compile("main reason for your visit"))).to_have_value(
            "Diabetes check-up"
        )
        await page.get_by_label(re.compile("Which medicines changed")).fill(
            "Metformin went up to 1000 mg"
        )
        await page.get_by_role("button", name="Send to the clinic").click()
        await expect(page.locator("#intake-sent")).to_contain_text("sent to the clinic")
        await open_screen(page, stack, "#/appointments")
        await expect(page.locator("[data-appointment='ehr-alice-appt-next']")).to_contain_text(
            "Sent to the clinic"
        )


async def test_a_patient_opens_a_thread_and_replies(stack: Stack, browser: Browser) -> None:
    await _alice_ready(stack)
    async with patient_page(browser) as page:
        await sign_in(page, stack, "demo-alice")
        await page.get_by_role("link", name=re.compile("^Messages")).click()
        await page.get_by_role("link", name="Question about metformin").click()
        messages = page.locator("#thread-messages > li")
        await expect(messages.nth(1)).to_contain_text("Dr. Grace Adams wrote")
        await expect(messages.nth(1)).to_contain_text("Take it with breakfast")
        await page.get_by_label("Your message").fill("Thank you, that helps.")
        await page.get_by_role("button", name="Send reply").click()
        await expect(page.locator("#reply-status")).to_contain_text("sent to your care team")
        await expect(messages.last).to_contain_text("Thank you, that helps.")
        await expect(messages.last).to_contain_text("You wrote")


async def test_a_patient_starts_a_thread_with_an_attachment(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    await patient_ready(stack, "demo-carol", "/v1/me/threads", lambda items: True)
    photo = tmp_path / "rash.png"
    photo.write_bytes(PNG)
    async with patient_page(browser) as page:
        await sign_in(page, stack, "demo-carol")
        await open_screen(page, stack, "#/messages")
        await page.get_by_role("link", name="Write a new message").click()
        # Sending without a topic says what is missing, next to the field.
        await page.get_by_role("button", name="Send message").click()
        await expect(page.get_by_text("Choose what your message is about.")).to_be_visible()
        await page.get_by_label("What is it about?").select_option("prescriptions")
        await expect(page.get_by_text("This goes to: prescriptions team")).to_be_visible()
        await page.get_by_label("Title").fill("Refill for my inhaler")
        await page.get_by_label("Your message").fill("Could I have a refill, please?")
        await page.get_by_label(re.compile("Attach a photo or PDF")).set_input_files(str(photo))
        await page.get_by_role("button", name="Send message").click()
        await expect(page.locator("#sent-to")).to_have_text("Sent to: prescriptions team.")
        await page.get_by_role("link", name="Open the conversation").click()
        await expect(page.locator("main h1")).to_have_text("Refill for my inhaler")
        async with page.expect_download() as download:
            await page.get_by_role("button", name="Download rash.png").click()
        saved = tmp_path / "downloaded.png"
        await (await download.value).save_as(saved)
        assert saved.read_bytes() == PNG


async def test_a_symptom_check_asks_one_question_at_a_time_and_ends_with_a_button(
    stack: Stack, browser: Browser
) -> None:
    await patient_ready(stack, "demo-carol", "/v1/me/threads", lambda items: True)
    async with patient_page(browser) as page:
        await sign_in(page, stack, "demo-carol")
        await page.get_by_role("link", name="Check symptoms").click()
        # Age and sex come from the record.
        await expect(page.locator("summary")).to_contain_text(
            "From your record".lower(), ignore_case=True
        )
        profile_age = await page.get_by_label("Age in years").input_value()
        assert profile_age.isdigit()
        await page.get_by_label(re.compile("What is wrong")).fill(
            "I have a cough and a fever since yesterday"
        )
        await page.get_by_role("button", name="Start the check").click()
        await expect(page.locator("#question-count")).to_have_text("Question 1")
        await expect(page.locator("#triage-question")).to_have_count(1)
        # A question without an answer says so next to it.
        await page.get_by_role("button", name="Next").click()
        await expect(page.locator("#triage-question .field-error")).to_be_visible()
        await page.locator("#triage-question").get_by_label("No").check()
        await page.get_by_role("button", name="Next").click()
        await expect(page.locator("#question-count")).to_have_text("Question 2")
        await page.get_by_role("button", name="Skip the other questions").click()
        outcome = page.locator("#triage-outcome")
        await expect(outcome).to_be_focused()
        await expect(outcome.locator("h2")).to_have_text("Book an appointment")
        await outcome.get_by_role("link", name="Book an appointment").click()
        await expect(page.locator("main h1")).to_have_text("Book an appointment")
        # An emergency ends with a call button.
        await page.get_by_role("link", name="Check symptoms").click()
        await page.get_by_label(re.compile("What is wrong")).fill(
            "crushing chest pain and I cannot breathe"
        )
        await page.get_by_role("button", name="Start the check").click()
        call = page.locator("#triage-outcome").get_by_role("link", name="Call 911 now")
        await expect(call).to_have_attribute("href", "tel:911")


async def test_a_new_result_and_a_clinicians_reply_arrive_live(
    stack: Stack, browser: Browser
) -> None:
    await _alice_ready(stack)
    async with patient_page(browser) as page:
        await sign_in(page, stack, "demo-alice")
        await open_screen(page, stack, "#/results")
        await page.evaluate("window.__notReloaded = true")
        written = (
            await stack.sandbox.admin.post(
                "/sandbox/simulate/lab-result",
                json={"patient": "demo-alice", "panel": "cbc", "abnormal": True},
            )
        ).json()["written"]
        report = next(
            w["reference"] for w in written if w["reference"].startswith("DiagnosticReport/")
        )
        report_id = report.split("/")[1]
        notices = page.locator("#notices")
        await expect(notices).to_contain_text("A new lab result is available.", timeout=LIVE)
        await expect(page.locator(f"[data-report='{report_id}']")).to_be_visible(timeout=LIVE)
        # The notice stays in view when the page is scrolled.
        await page.mouse.wheel(0, 3000)
        await expect(notices.locator(".notice").first).to_be_in_viewport()
        # She writes; the clinician's answer shows in the open conversation.
        await page.get_by_role("link", name=re.compile("^Messages")).click()
        await page.get_by_role("link", name="Question about metformin").click()
        await page.get_by_label("Your message").fill("Should I also take it at lunch?")
        await page.get_by_role("button", name="Send reply").click()
        await expect(page.locator("#reply-status")).to_contain_text("sent to")
        await _wait_filed_in_ehr(stack, page)
        reply = await stack.sandbox.admin.post(
            "/sandbox/simulate/message-reply",
            json={"patient": "demo-alice", "text": "No, breakfast and dinner are enough."},
        )
        assert reply.status_code == 201, reply.text
        await expect(notices).to_contain_text("new message from your care team", timeout=LIVE)
        await expect(page.locator("#thread-messages")).to_contain_text(
            "No, breakfast and dinner are enough.", timeout=LIVE
        )
        assert await page.evaluate("window.__notReloaded === true")


async def _wait_filed_in_ehr(stack: Stack, page: Page) -> None:
    """The simulated clinician answers the patient's latest message in the EHR: wait until
    the connector has filed hers there."""
    from servicekit.testing import eventually

    async def filed() -> bool:
        response = await stack.sandbox.admin.get(
            "/fhir/Communication",
            params={"subject": "Patient/demo-alice", "_sort": "-_lastUpdated", "_count": "5"},
        )
        bodies = [
            p.get("contentString", "")
            for e in response.json().get("entry", [])
            for p in e["resource"].get("payload", [])
        ]
        return "Should I also take it at lunch?" in bodies

    await eventually(filed, timeout=90, interval=0.5)


async def test_an_ended_session_says_so_and_signs_in_again(stack: Stack, browser: Browser) -> None:
    await _alice_ready(stack)
    async with patient_page(browser) as page:
        await sign_in(page, stack, "demo-alice")
        # The token's lifetime is over (as if the page had been left open).
        await page.evaluate("sessionStorage.setItem('expires_at', String(Date.now() - 1000))")
        # She moves on. (Not a click on the menu: whatever the page does next, its live
        # stream reconnecting included, may find the session over first and hide the menu.)
        await page.evaluate("location.hash = '#/results'")
        await expect(page.locator("#signed-out-reason")).to_contain_text(
            "signed out because your session ended"
        )
        await expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
        await sign_in(page, stack, "demo-alice")
        await expect(page.locator("main h1")).to_contain_text("Alice")


async def test_the_health_summary_lists_medicines_and_downloads_a_document(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    await _alice_ready(stack)
    await patient_ready(stack, "demo-alice", "/v1/me/documents", lambda body: body["items"])
    async with patient_page(browser) as page:
        await sign_in(page, stack, "demo-alice")
        await page.get_by_role("link", name="Health summary").click()
        medicines = page.locator("section[aria-labelledby='meds-h']")
        await expect(medicines).to_contain_text("Metformin hydrochloride 500 MG Oral Tablet")
        await expect(medicines).to_contain_text("Take 1 tablet by mouth twice daily with meals")
        await expect(medicines).to_contain_text("Taking now")
        await expect(page.locator("section[aria-labelledby='allergies-h']")).to_contain_text(
            "Penicillin"
        )
        async with page.expect_download() as download:
            await page.get_by_role(
                "button", name=re.compile("Download After-visit summary")
            ).click()
        saved = tmp_path / "summary.txt"
        await (await download.value).save_as(saved)
        assert saved.stat().st_size > 0


async def test_a_patient_lets_her_son_help_then_stops_it(
    stack: Stack, browser: Browser, axe_source: str, screenshots: Path
) -> None:
    async with patient_page(browser) as alice, patient_page(browser) as son:
        await sign_in(alice, stack, "demo-alice")
        await open_screen(alice, stack, "#/caregivers")
        await alice.get_by_label("Kenji Nakamura (son)").check()
        await alice.locator("#part-appointments").check()
        await alice.locator("#part-messages").check()
        await alice.get_by_role("button", name="Give access").click()
        await expect(alice.locator("#caregiver-status")).to_contain_text("can now help you")
        row = alice.locator("#caregivers tbody tr").first
        await expect(row).to_contain_text("Kenji Nakamura")
        await expect(row).to_contain_text("Appointments, Messages")
        assert await serious_violations(alice, axe_source) == []
        assert await fits_width(alice)
        await screenshot(alice, screenshots, "caregivers-granted")

        # Her son signs in as himself, for her: he sees what she shared, nothing else, and
        # the page asks for nothing else (a consent denial means someone probing).
        denied = await _consent_denials(stack)
        await sign_in(son, stack, "RelatedPerson/demo-alice-son")
        await expect(son.locator(".who")).to_contain_text("caregiver of")
        await expect(son.locator("#nav a[href='#/appointments']")).to_be_visible()
        await expect(son.locator("#nav a[href='#/results']")).to_be_hidden()
        await expect(son.locator("#nav a[href='#/caregivers']")).to_be_hidden()
        await open_screen(son, stack, "#/appointments")
        await expect(son.locator("main .callout.error")).to_have_count(0)
        await open_screen(son, stack, "#/")
        assert await _consent_denials(stack) == denied
        await open_screen(son, stack, "#/results")
        await expect(son.locator("main .callout.error")).to_contain_text("access to results")
        assert await _consent_denials(stack) > denied  # typing the address is counted
        await screenshot(son, screenshots, "caregiver-refused")

        # She stops it: his next step is refused, and her access log names him.
        await alice.get_by_role("button", name="Stop access").click()
        await expect(alice.locator("#caregiver-status")).to_contain_text("can no longer see")
        await open_screen(son, stack, "#/appointments")
        await expect(son.locator("main .callout.error")).to_contain_text("has not given")
        await open_screen(alice, stack, "#/access-log")
        await expect(alice.locator("#access-log")).to_contain_text("Kenji Nakamura (caregiver)")


async def _consent_denials(stack: Stack) -> float:
    """The gateway's count of caregiver requests its consent check refused."""
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    found = re.search(
        r'^security_events_total\{event="consent_denied",service="gateway"\} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


async def test_home_says_when_a_part_of_the_summary_is_missing(
    stack: Stack, browser: Browser
) -> None:
    # The gateway leaves a slow service's part out of the summary with a warning
    # (SUMMARY_PART_TIMEOUT_S): the real answer, with scheduling's part left out as the
    # gateway leaves it, must not read as "no appointments".
    await _alice_ready(stack)

    async def scheduling_slow(route: Any) -> None:
        response = await route.fetch()
        body = await response.json()
        body["appointments"] = None
        body["warnings"].append(
            {"part": "appointments", "detail": "scheduling did not answer within 1 s"}
        )
        await route.fulfill(response=response, json=body)

    async with patient_page(browser) as page:
        await page.route("**/v1/me/summary", scheduling_slow)
        await sign_in(page, stack, "demo-alice")
        await expect(page.locator("main")).to_contain_text(
            "Some of your information cannot be shown right now (appointments)"
        )
        await expect(page.locator("main")).to_contain_text(
            "Your appointments cannot be shown right now"
        )
        await expect(page.locator("main")).not_to_contain_text("You have no appointments")


async def test_the_api_docs_render_offline_with_an_authorize_button(
    stack: Stack, browser: Browser
) -> None:
    # Swagger UI must read the gateway's OpenAPI 3.1 document (Swagger UI 4 refused it with
    # "Unable to render this definition"), from the gateway's own files.
    async with patient_page(browser) as page:
        outside: list[str] = []
        page.on(
            "request",
            lambda r: outside.append(r.url) if not r.url.startswith(stack.gateway_url) else None,
        )
        await page.goto(stack.gateway_url + "/docs")
        await expect(page.get_by_role("button", name="Authorize")).to_be_visible()
        summary = page.locator(".opblock-summary-path", has_text="/v1/me/summary")
        await expect(summary.first).to_be_visible()
        await expect(page.get_by_text("Unable to render this definition")).to_have_count(0)
        await page.get_by_role("button", name="Authorize").click()
        await expect(page.get_by_text("smart (http, Bearer)")).to_be_visible()
    assert outside == []
