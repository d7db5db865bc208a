"""Fixtures and helpers of the billing tests: accounts and keys made by plain SQL, a
Billing on a real pool, and the audit (``alicode-gw audit``, run as the operator runs
it) after every billing test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from alicode_gw.money.billing import Billing
from alicode_gw.money.catalog import ModelCatalog
from tests.support.money import assert_audit_clean


@pytest.fixture(autouse=True)
async def books_add_up(database_url: str, redis_url: str) -> AsyncIterator[None]:
    """After every billing test: ``alicode-gw audit`` finds nothing."""
    yield
    await assert_audit_clean(database_url, redis_url)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=20)
    assert created is not None
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
async def model_catalog(pool: asyncpg.Pool) -> ModelCatalog:
    models = ModelCatalog(pool)
    await models.refresh()
    return models


@pytest.fixture
async def billing(
    pool: asyncpg.Pool,
    redis: Redis,
    redis_prefix: str,
    model_catalog: ModelCatalog,
    tmp_path: Path,
) -> Billing:
    return Billing(
        pool,
        redis,
        redis_prefix=f"{redis_prefix}{secrets.token_hex(3)}:",
        data_dir=tmp_path,
    )
