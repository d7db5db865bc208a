"""/dashboard/keys: the account's keys; create one (the CLI's limits and validation:
:mod:`~alicode_gw.identity.keylimits` then ``accounts.create_key``), its secret shown
once with a copy button; revoke one (on every node, as ``alicode-gw key revoke``:
:func:`~alicode_gw.identity.revocation.revoke_key`); set or clear a key's spend cap;
keep a key out of the response cache or let it back in (as ``alicode-gw key update
--response-cache``; docs/response-cache.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from alicode_gw.dashboard import store
from alicode_gw.dashboard.site import Page, row_id
from alicode_gw.errors import NotFoundError
from alicode_gw.identity import accounts, keylimits, revocation
from alicode_gw.identity.auth import announce_revoked

# form field -> (create_key argument, parser, label)
LIMIT_FIELDS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "rpm": ("rpm", keylimits.positive_int, "Requests per minute"),
    "concurrency": ("concurrency", keylimits.positive_int, "Concurrent requests"),
    "budget_tokens": ("budget_tokens", keylimits.positive_int, "Tokens per 5 hours"),
    "spend_cap_usd": ("spend_cap_nanos", keylimits.spend_cap, "Spend cap (USD)"),
    "models": ("models", keylimits.allowed_models, "Allowed models"),
}


async def _render(page: Page, status: int = 200, **values: Any) -> web.StreamResponse:
    records = await accounts.list_keys(page.db, page.me.email)
    records.sort(key=lambda r: (r.status != "active", -r.id))
    values.setdefault("error", None)
    values.setdefault("created", None)
    values.setdefault("form", {})
    return page.render(
        "keys.html",
        status=status,
        keys=records,
        fields=LIMIT_FIELDS,
        response_cache_on=page.ctx.state.config.response_cache,
        **values,
    )


async def keys_page(page: Page) -> web.StreamResponse:
    return await _render(page)


async def create(page: Page) -> web.StreamResponse:
    limits: dict[str, Any] = {}
    try:
        for name, (argument, parse, label) in LIMIT_FIELDS.items():
            text = page.field(name).strip()
            if text:
                try:
                    limits[argument] = parse(text)
                except ValueError as exc:
                    raise accounts.AccountError(f"{label}: {exc}") from None
        record, secret = await accounts.create_key(
            page.db, page.me.account_id, page.field("name"), **limits
        )
    except accounts.AccountError as exc:
        return await _render(page, status=400, error=str(exc), form=page.form)
    return await _render(page, created=(record, secret))


async def _own_key(page: Page) -> accounts.KeyRecord:
    """The key named in the path, if it is this account's; else 404."""
    key_id = row_id(page.ctx.params["key_id"])
    record = None if key_id is None else await accounts.get_key(page.db, key_id)
    if record is None or record.account_id != page.me.account_id:
        raise NotFoundError("No such key.")
    return record


async def revoke(page: Page) -> web.StreamResponse:
    record = await _own_key(page)
    state = page.ctx.state
    await revocation.revoke_key(
        page.db, state.redis, state.config.redis_prefix, record.id, "revoked from the dashboard"
    )
    return page.redirect("/dashboard/keys")


async def set_cap(page: Page) -> web.StreamResponse:
    record = await _own_key(page)
    text = page.field("spend_cap_usd").strip()
    try:
        cap = keylimits.spend_cap(text) if text else None
    except ValueError as exc:
        return await _render(page, status=400, error=f"Spend cap (USD): {exc}")
    found = await store.rows(
        page.db,
        "set_key_spend_cap",
        account_id=page.me.account_id,
        key_id=record.id,
        spend_cap_nanos=cap,
    )
    if not found:
        raise NotFoundError("No such key.")
    # every node re-reads the key (its cap decides how its requests are held)
    state = page.ctx.state
    await announce_revoked(state.redis, state.config.redis_prefix, [record.public_id])
    return page.redirect("/dashboard/keys")


async def set_response_cache(page: Page) -> web.StreamResponse:
    record = await _own_key(page)
    enabled = page.field("response_cache") == "on"
    await accounts.set_response_cache(page.db, record.id, enabled)
    state = page.ctx.state  # every node re-reads the key at once
    await announce_revoked(state.redis, state.config.redis_prefix, [record.public_id])
    return page.redirect("/dashboard/keys")
