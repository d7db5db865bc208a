"""The whole customer journey in a real headless Chromium (Debian's ``chromium``,
driven by Playwright; never a downloaded browser): register, log in, create a key and
copy it, use it with the anthropic SDK, find the request on the usage page (tokens,
cost, client IP), set a spend cap, revoke (the SDK gets 401), emergency stop, delete
the account, and logging in fails. Each page's screenshot goes to
``$ALICODE_SCREENSHOTS`` or ``<tmp_path>/screenshots`` (the test prints where)."""

from __future__ import annotations

import os
from pathlib import Path

import anthropic
import asyncpg
import pytest

from alicode_gw import app
from alicode_gw.money import ledger

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "a browser's password"
MODEL = "claude-sonnet-4-6"


def chromium_or_skip() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI"):  # as the other tests that CI must not skip
        pytest.fail(f"{CHROMIUM} is missing (Debian package chromium; .ci/run installs it)")
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium to run the browser tests")


class Shots:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        folder.mkdir(parents=True, exist_ok=True)
        print(f"dashboard screenshots: {folder}")

    async def take(self, page, name: str) -> None:
        self.count += 1
        await page.screenshot(
            path=str(self.folder / f"{self.count:02d}-{name}.png"), full_page=True
        )


async def test_customer_journey_in_chromium(
    dash_gw: app.Gateway, db: asyncpg.Connection, tmp_path: Path
) -> None:
    executable = chromium_or_skip()
    from playwright.async_api import async_playwright, expect

    shots = Shots(Path(os.environ.get("ALICODE_SCREENSHOTS") or tmp_path / "screenshots"))
    base = dash_gw.url
    email = f"browser-{os.urandom(4).hex()}@example.com"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(executable), headless=True, args=["--no-sandbox"]
        )
        context = await browser.new_context(viewport={"width": 1200, "height": 900})
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        page = await context.new_page()
        page.on("dialog", lambda dialog: dialog.accept())
        clients: list[anthropic.AsyncAnthropic] = []
        try:
            # register, log out, log in
            await page.goto(f"{base}/dashboard/register")
            await shots.take(page, "register")
            await page.fill("input[name=email]", email)
            await page.fill("input[name=password]", PASSWORD)
            await page.fill("input[name=confirm]", PASSWORD)
            await page.click("button[type=submit]:has-text('Register')")
            await page.wait_for_url(f"{base}/dashboard")
            assert "$0.00" in await page.inner_text("#balance")
            await page.click("button:has-text('Log out')")
            await page.wait_for_url(f"{base}/dashboard/login")
            await page.fill("input[name=email]", email)
            await page.fill("input[name=password]", PASSWORD)
            await shots.take(page, "login")
            await page.click("button:has-text('Log in')")
            await page.wait_for_url(f"{base}/dashboard")
            await ledger.topup(db, email, 5 * 1_000_000_000, "browser test")  # the operator
            await page.reload()
            assert "$5.00" in await page.inner_text("#balance")
            await shots.take(page, "overview-funded")

            # create a key and copy it
            await page.goto(f"{base}/dashboard/keys")
            await page.fill("#create-key input[name=name]", "browser key")
            await page.click("#create-key button[type=submit]")
            secret = (await page.inner_text("#new-secret")).strip()
            assert secret.startswith("sk-ali-")
            await page.click("#copy-key")
            await expect(page.locator("#copy-key")).to_have_text("Copied")
            copied = await page.evaluate("navigator.clipboard.readText()")
            assert copied == secret
            await shots.take(page, "key-created")
            await page.goto(f"{base}/dashboard/keys")
            assert secret not in await page.content()  # shown once

            # use it with the SDK
            sdk = anthropic.AsyncAnthropic(api_key=copied, base_url=base, max_retries=0)
            clients.append(sdk)
            raw = await sdk.messages.with_raw_response.create(
                model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "hello"}]
            )
            answer = await raw.parse()
            cost = raw.headers["x-alicode-cost-usd"]
            assert not await dash_gw.state.tasks.settle(5.0)

            # the usage page shows it: tokens, cost, client IP
            await page.goto(f"{base}/dashboard/usage")
            by_ip = await page.inner_text("#usage-ip")
            assert "127.0.0.1" in by_ip
            row = next(line for line in by_ip.splitlines() if "127.0.0.1" in line)
            ip, requests, tokens_in, tokens_out, _, _, shown_cost = row.split("\t")
            assert (ip.strip(), requests.strip()) == ("127.0.0.1", "1")
            assert tokens_in.strip() == str(answer.usage.input_tokens)
            assert tokens_out.strip() == str(answer.usage.output_tokens)
            assert shown_cost.strip() == cost, (cost, row)
            assert "browser key" in await page.inner_text("#usage-key")
            assert MODEL in await page.inner_text("#usage-model")
            await shots.take(page, "usage")
            await page.goto(f"{base}/dashboard/billing")
            assert "127.0.0.1" in await page.inner_text("#ledger")
            await shots.take(page, "billing")

            # a spend cap
            await page.goto(f"{base}/dashboard/keys")
            await page.fill("form.cap input[name=spend_cap_usd]", "1.50")
            # (the answer is the same URL: wait for the new page's content, not the URL)
            await page.click("form.cap button")
            await expect(page.locator("#keys")).to_contain_text("cap $1.50")
            cap = await db.fetchval(
                "SELECT spend_cap_nanos FROM api_keys WHERE name = 'browser key'"
                " AND account_id = (SELECT id FROM accounts WHERE email = $1)",
                email,
            )
            assert cap == 1_500_000_000
            await shots.take(page, "spend-cap")

            # revoke: the SDK gets 401
            await page.click("form.revoke button")
            await expect(page.locator("#keys td.status")).to_contain_text("revoked")
            await shots.take(page, "revoked")
            with pytest.raises(anthropic.AuthenticationError):
                await sdk.messages.create(
                    model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "again"}]
                )

            # a second key, then the emergency stop revokes it
            await page.fill("#create-key input[name=name]", "second key")
            await page.click("#create-key button[type=submit]")
            second = (await page.inner_text("#new-secret")).strip()
            await page.goto(f"{base}/dashboard/account")
            await page.check("#emergency-stop input[name=confirm]")
            await page.click("#emergency-stop button")
            await expect(page.locator("#stopped")).to_be_visible()
            await shots.take(page, "emergency-stop")
            sdk = anthropic.AsyncAnthropic(api_key=second, base_url=base, max_retries=0)
            clients.append(sdk)
            with pytest.raises(anthropic.AuthenticationError):
                await sdk.messages.create(
                    model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
                )

            # delete the account; logging in then fails
            await page.fill("#delete-account input[name=password]", PASSWORD)
            await page.click("#delete-account button")
            await page.wait_for_url(f"{base}/dashboard/login?notice=deleted")
            await shots.take(page, "deleted")
            await page.fill("input[name=email]", email)
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button:has-text('Log in')")
            await expect(page.locator("#error")).to_contain_text("Wrong email or password")
            await shots.take(page, "login-after-delete")
        finally:
            for client in clients:
                await client.close()
            await browser.close()
    assert not await ledger.audit(db)
    assert shots.count >= 10
