"""Limits in Redis: exact under 200 concurrent admissions spread over two nodes (two
Limiter instances, each with its own Redis client), lease expiry, the rolling budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from alicode_gw.errors import RateLimitError, ServiceUnavailableError
from alicode_gw.identity.auth import ApiKey
from alicode_gw.limits.limiter import Admission, Limiter
from alicode_gw.limits.lua import FINISH_LUA
from alicode_gw.limits.refusals import format_duration
from alicode_gw.limits.resp import ScriptCall, ScriptPipe
from alicode_gw.limits.shares import KEEP_SECONDS, RESERVE_SECONDS
from alicode_gw.store.backends import create_redis
from alicode_gw.tasks import TaskTracker
from tests.support.keys import RedisProxy, unique_ip

KEY_IDS = iter(range(10_000_000, 20_000_000))


def api_key(**limits: object) -> ApiKey:
    """A key with a fresh id (limits live in Redis under the key id)."""
    values = {
        "rpm_limit": None,
        "concurrency_limit": None,
        "budget_tokens": None,
        "spend_cap_nanos": None,
        "allowed_models": None,
        **limits,
    }
    return ApiKey(id=next(KEY_IDS), public_id="k", account_id=1, name="t", **values)  # type: ignore[arg-type]


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[tuple[Redis, Redis]]:
    a, b = create_redis(redis_url), create_redis(redis_url)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


@pytest.fixture
async def made(clients) -> AsyncIterator[list[Limiter]]:
    """Limiters a test builds; their connections are closed when it ends."""
    limiters: list[Limiter] = []
    yield limiters
    for limiter in limiters:
        limiter.close()


@pytest.fixture
def two_nodes(clients, redis_prefix: str, made: list[Limiter]):
    """Two Limiter instances ("nodes"), each on its own Redis client."""

    def build(**kw: object) -> list[Limiter]:
        defaults: dict[str, object] = {"ip_rpm": 0, "ip_concurrency": 0, **kw}
        nodes = [Limiter(c, redis_prefix, **defaults) for c in clients]  # type: ignore[arg-type]
        made.extend(nodes)
        return nodes

    return build


async def admit_many(
    nodes: list[Limiter], n: int, key: ApiKey, ip: str | None = None
) -> tuple[list[Admission], list[RateLimitError]]:
    results = await asyncio.gather(
        *(nodes[i % len(nodes)].admit(ip or unique_ip(), key) for i in range(n)),
        return_exceptions=True,
    )
    admitted = [r for r in results if isinstance(r, Admission)]
    rejected = [r for r in results if isinstance(r, RateLimitError)]
    assert len(admitted) + len(rejected) == n, [r for r in results if isinstance(r, Exception)]
    return admitted, rejected


async def test_key_rpm_exact_across_two_nodes(clients, redis_prefix: str, two_nodes) -> None:
    nodes = two_nodes()
    key = api_key(rpm_limit=50)
    admitted, rejected = await admit_many(nodes, 200, key)
    assert len(admitted) == 50 and len(rejected) == 150
    err = rejected[0]
    assert err.status == 429 and err.error_type == "rate_limit_error"
    assert err.headers["X-RateLimit-Limit"] == "50"
    assert err.headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(err.headers["Retry-After"]) <= 60
    assert 0 <= int(err.headers["X-RateLimit-Reset"]) - time.time() <= 61
    remaining = sorted(int(a.headers["X-RateLimit-Remaining"]) for a in admitted)
    assert remaining == list(range(50))
    # Finishing frees no RPM slot: the minute has not passed.
    for admission in admitted:
        await nodes[0].finish(admission, 0)
    with pytest.raises(RateLimitError):
        await nodes[1].admit(unique_ip(), key)


async def test_key_concurrency_exact_across_two_nodes(
    clients, redis_prefix: str, two_nodes
) -> None:
    nodes = two_nodes()
    key = api_key(concurrency_limit=7)
    admitted, rejected = await admit_many(nodes, 200, key)
    assert len(admitted) == 7 and len(rejected) == 193
    assert "concurrent" in rejected[0].message
    assert rejected[0].headers["Retry-After"] == "1"
    await asyncio.gather(*(nodes[1].finish(a, 10) for a in admitted))
    admitted, _ = await admit_many(nodes, 200, key)
    assert len(admitted) == 7
    await asyncio.gather(*(nodes[0].finish(a, 0) for a in admitted))


async def test_ip_limits_exact_across_two_nodes(clients, redis_prefix: str, two_nodes) -> None:
    ip = unique_ip()
    nodes = two_nodes(ip_rpm=30, ip_concurrency=0)
    admitted, rejected = await admit_many(nodes, 200, api_key(), ip)
    assert len(admitted) == 30
    assert "IP address" in rejected[0].message
    assert rejected[0].headers["X-RateLimit-Limit"] == "30"

    ip = unique_ip()
    nodes = two_nodes(ip_rpm=0, ip_concurrency=5)
    admitted, _ = await admit_many(nodes, 200, api_key(), ip)
    assert len(admitted) == 5
    # Another IP has slots of its own; 0 turns a limit off.
    assert len((await admit_many(nodes, 10, api_key(), unique_ip()))[0]) == 5
    unlimited = two_nodes()
    assert len((await admit_many(unlimited, 200, api_key(), ip))[0]) == 200


async def test_rejection_takes_no_slot(clients, redis_prefix: str, two_nodes) -> None:
    """All-or-nothing: a request refused by the key's concurrency does not use up the
    key's requests per minute."""
    nodes = two_nodes()
    key = api_key(rpm_limit=3, concurrency_limit=1)
    first = await nodes[0].admit(unique_ip(), key)
    for _ in range(5):
        with pytest.raises(RateLimitError, match="concurrent"):
            await nodes[1].admit(unique_ip(), key)
    await nodes[0].finish(first, 0)
    second = await nodes[1].admit(unique_ip(), key)
    assert second.headers["X-RateLimit-Remaining"] == "1"


async def test_leases_of_a_crashed_node_expire(clients, redis_prefix: str, two_nodes) -> None:
    crashed, alive = two_nodes(lease_seconds=0.5)
    key = api_key(concurrency_limit=2)
    await crashed.admit(unique_ip(), key)
    await crashed.admit(unique_ip(), key)  # never finished: the node "crashed"
    with pytest.raises(RateLimitError):
        await alive.admit(unique_ip(), key)
    await asyncio.sleep(0.7)
    admission = await alive.admit(unique_ip(), key)
    await alive.finish(admission, 0)


async def test_live_leases_are_renewed(clients, redis_prefix: str, two_nodes) -> None:
    node, other = two_nodes(lease_seconds=0.5, refresh_interval=0.1)
    key = api_key(concurrency_limit=1)
    admission = await node.admit(unique_ip(), key)
    renewer = asyncio.create_task(node.refresh_loop())
    try:
        await asyncio.sleep(1.2)  # more than two lease lifetimes: a long stream
        with pytest.raises(RateLimitError):
            await other.admit(unique_ip(), key)
    finally:
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)
    await node.finish(admission, 0)
    assert node.in_flight == 0
    await other.finish(await other.admit(unique_ip(), key), 0)


async def test_rolling_token_budget(clients, redis_prefix: str, two_nodes) -> None:
    # A 3-second window of 1-second buckets stands in for 5 hours of minutes.
    nodes = two_nodes(budget_window_seconds=3, bucket_seconds=1)
    key = api_key(budget_tokens=1000)
    await nodes[0].finish(await nodes[0].admit(unique_ip(), key), 600)
    await nodes[1].finish(await nodes[1].admit(unique_ip(), key), 500)
    usage = await nodes[0].usage(key)
    assert usage.used_tokens == 1100
    assert usage.budget_resets_in is not None and 0 < usage.budget_resets_in <= 5
    with pytest.raises(RateLimitError) as info:
        await nodes[0].admit(unique_ip(), key)
    assert "Token budget exceeded" in info.value.message
    assert "Resets in" in info.value.message
    assert 1 <= int(info.value.headers["Retry-After"]) <= 5
    deadline = time.monotonic() + 8
    while True:  # the window rolls: the usage leaves it and requests pass again
        try:
            admission = await nodes[1].admit(unique_ip(), key)
            break
        except RateLimitError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    await nodes[1].finish(admission, 0)
    assert (await nodes[0].usage(key)).used_tokens < 1000


async def test_budget_reserves_the_worst_case_of_requests_in_flight(two_nodes) -> None:
    """Admissions reserve their worst case against the budget on every node; the
    finish replaces it with the tokens used, and a refusal (429, not the exhausted
    budget's message) lasts only while the reservations fill the budget."""
    nodes = two_nodes()
    key = api_key(budget_tokens=1000)
    first = await nodes[0].admit(unique_ip(), key, 600)
    second = await nodes[1].admit(unique_ip(), key, 600)  # 0 + 600 < 1000: admitted
    with pytest.raises(RateLimitError) as info:  # 600 + 600 >= 1000 on either node
        await nodes[0].admit(unique_ip(), key, 1)
    assert "in flight" in info.value.message and info.value.limit == "key_budget"
    assert info.value.headers["Retry-After"] == "1"
    await nodes[0].finish(first, 100)  # the 600 reserved become 100 used
    third = await nodes[1].admit(unique_ip(), key, 600)  # 100 + 600 < 1000
    await nodes[1].finish(second, 0)  # a failed request releases its reservation
    await nodes[1].finish(third, 50)
    assert (await nodes[0].usage(key)).used_tokens == 150
    await nodes[0].finish(await nodes[0].admit(unique_ip(), key, 849), 0)


async def test_budget_reservation_of_a_dead_node_expires(two_nodes) -> None:
    """A reservation is a lease: renewed while its request runs, gone when its node
    stops renewing it."""
    crashed, alive = two_nodes(lease_seconds=0.5, refresh_interval=0.1)
    key = api_key(budget_tokens=1000)
    await crashed.admit(unique_ip(), key, 2000)  # never finished: its node died
    with pytest.raises(RateLimitError):
        await alive.admit(unique_ip(), key, 0)
    await asyncio.sleep(0.7)
    await alive.finish(await alive.admit(unique_ip(), key, 900), 0)
    # a live request's reservation is renewed past its lease
    held = await alive.admit(unique_ip(), key, 1000)
    renewer = asyncio.create_task(alive.refresh_loop())
    try:
        await asyncio.sleep(1.2)
        with pytest.raises(RateLimitError):
            await crashed.admit(unique_ip(), key, 1)
    finally:
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)
    await alive.finish(held, 0)
    await crashed.finish(await crashed.admit(unique_ip(), key, 999), 0)


async def test_budget_at_real_scale_reports_hours(clients, redis_prefix: str, two_nodes) -> None:
    node = two_nodes()[0]
    key = api_key(budget_tokens=100)
    await node.finish(await node.admit(unique_ip(), key), 150)
    with pytest.raises(RateLimitError) as info:
        await node.admit(unique_ip(), key)
    assert "Resets in 5h" in info.value.message
    assert 5 * 3600 - 120 <= int(info.value.headers["Retry-After"]) <= 5 * 3600 + 60


async def test_redis_down_fails_closed_with_503(redis_url: str, redis_prefix: str, made) -> None:
    async with RedisProxy(redis_url) as proxy:
        client = create_redis(proxy.url)
        node = Limiter(client, redis_prefix, ip_rpm=10, ip_concurrency=10)
        made.append(node)
        try:
            admission = await node.admit(unique_ip(), api_key(rpm_limit=5))
            await proxy.cut()
            with pytest.raises(ServiceUnavailableError) as info:
                await node.admit(unique_ip(), api_key(rpm_limit=5))
            assert info.value.status == 503
            await node.finish(admission, 10)  # never raises; logged instead
            assert node.in_flight == 0
        finally:
            await client.aclose()


async def test_script_is_reloaded_after_script_flush(clients, redis_prefix: str, two_nodes) -> None:
    node = two_nodes()[0]
    await node.finish(await node.admit(unique_ip(), api_key(rpm_limit=5)), 0)
    await clients[0].script_flush()
    await node.finish(await node.admit(unique_ip(), api_key(rpm_limit=5)), 0)


async def test_concurrent_calls_share_pipelines_and_keep_their_own_errors(
    clients, redis_prefix: str, made
) -> None:
    """Many admits at once travel in a few pipelines, not one round trip each; an
    error in one call of a pipeline stays with that call."""
    client = clients[0]
    node = Limiter(client, redis_prefix, ip_rpm=0, ip_concurrency=0)
    made.append(node)
    key = api_key(rpm_limit=1000)
    admitted = await asyncio.gather(*(node.admit(unique_ip(), key) for _ in range(50)))
    assert node.round_trips < 10
    await asyncio.gather(*(node.finish(a, 1) for a in admitted))
    assert node.round_trips < 20
    status = await node.usage(key)
    assert (status.requests_last_minute, status.in_flight, status.used_tokens) == (50, 0, 50)

    script = client.register_script(FINISH_LUA)
    wrong_type = f"{redis_prefix}wrong-type"
    await client.set(wrong_type, "not a sorted set")
    good_keys = [f"{redis_prefix}ok:{i}" for i in range(5)]
    pipe = ScriptPipe(client)
    # Budget keys, then a set and the member to remove from it.
    outcomes = await pipe.run(
        [
            ScriptCall(script, good_keys[:4], [0, 1000, 60, "t"]),
            ScriptCall(script, [*good_keys[:3], wrong_type], [0, 1000, 60, "t"]),
            ScriptCall(script, good_keys[:4], [0, 1000, 60, "t"]),
        ],
    )
    assert outcomes[0] == 1 and outcomes[2] == 1
    assert "WRONGTYPE" in str(outcomes[1])
    pipe.connection.close()


async def test_a_dropped_connection_is_replaced_without_failing_requests(
    clients, redis_prefix: str, made
) -> None:
    """The limiter keeps one Redis connection; when the server drops it (restart, idle
    timeout), the next batch reconnects and nobody sees an error."""
    client = clients[0]
    node = Limiter(client, redis_prefix, ip_rpm=0, ip_concurrency=0)
    made.append(node)
    key = api_key(rpm_limit=100)
    await node.finish(await node.admit(unique_ip(), key), 0)
    (client_id,) = await node._pipe.connection.execute([("CLIENT", "ID")])
    assert await client.client_kill_filter(_id=client_id) == 1
    await node.finish(await node.admit(unique_ip(), key), 0)
    assert (await node.usage(key)).requests_last_minute == 2


LATER = RESERVE_SECONDS + KEEP_SECONDS + 1  # seconds: every share is past its time


async def redis_counts(client: Redis, redis_prefix: str, key: ApiKey) -> tuple[int, int]:
    """(entries in the key's minute log, slots in its concurrency set), as Redis holds them."""
    base = f"{redis_prefix}rl:key:{key.id}:"
    return await client.zcard(base + "rpm"), await client.zcard(base + "conc")


async def test_a_run_of_requests_is_admitted_from_the_node_share(
    clients, redis_prefix: str, two_nodes
) -> None:
    node, other = two_nodes()
    key = api_key(rpm_limit=1000, concurrency_limit=40)
    ip = unique_ip()
    trips = node.round_trips
    for _ in range(60):
        admission = await node.admit(ip, key)
        await node.finish(admission, 0)
    # The first admission finds no run, the second reserves 32 more entries, and so on;
    # every slot is the one kept from the request before.
    assert node.local_admissions >= 55
    assert node.round_trips - trips <= 4
    remaining = int(admission.headers["X-RateLimit-Remaining"])
    assert remaining <= 1000 - 60
    # Redis counts what the node holds in reserve; the node's view of the key does not.
    entries, slots = await redis_counts(clients[0], redis_prefix, key)
    assert entries > 60 and slots == 1
    assert (await node.usage(key)).requests_last_minute == 60
    assert (await node.usage(key)).in_flight == 0
    assert (await other.usage(key)).in_flight == 1  # another node sees the kept slot
    assert await node.give_back_unused(time.monotonic() + LATER) == entries - 60 + 1
    await asyncio.sleep(0.1)  # given back in a call that lingers
    assert await redis_counts(clients[0], redis_prefix, key) == (60, 0)
    assert (await other.usage(key)).requests_last_minute == 60


async def test_shares_never_take_a_limit_beyond_its_count(
    clients, redis_prefix: str, two_nodes
) -> None:
    """Two nodes take turns running requests of one key until both are refused; their
    shares go back between turns. Exactly the limit is admitted, never more."""
    nodes = two_nodes()
    key = api_key(rpm_limit=40, concurrency_limit=12)
    admitted = 0
    refused_in_a_row = 0
    while refused_in_a_row < 2:
        for node in nodes:
            ran = 0
            while ran < 7:
                try:
                    admission = await node.admit(unique_ip(), key)
                except RateLimitError:
                    break
                await node.finish(admission, 0)
                ran += 1
            admitted += ran
            refused_in_a_row = refused_in_a_row + 1 if ran == 0 else 0
            for each in nodes:
                await each.give_back_unused(time.monotonic() + LATER)
        assert admitted <= 40
    assert admitted == 40
    await asyncio.sleep(0.1)
    assert await redis_counts(clients[0], redis_prefix, key) == (40, 0)


async def test_a_refusal_uses_a_share_that_arrived_meanwhile(
    clients, redis_prefix: str, two_nodes
) -> None:
    """Ten admissions at once: the first one's reply reserves an entry for the node;
    an admission Redis refuses afterwards takes it rather than a 429."""
    node = two_nodes()[0]
    key = api_key(rpm_limit=8)
    await node.admit(unique_ip(), key)  # a run begins: the next one asks for a share
    admitted, rejected = await admit_many([node], 10, key)
    assert (len(admitted), len(rejected)) == (7, 3)
    assert await redis_counts(clients[0], redis_prefix, key) == (8, 0)


async def test_a_kept_slot_is_never_one_too_many(clients, redis_prefix: str, two_nodes) -> None:
    node, other = two_nodes()
    key = api_key(concurrency_limit=8)  # a node keeps at most 2 of 8
    for _ in range(5):
        await node.finish(await node.admit(unique_ip(), key), 0)
    assert node.local_admissions == 4
    admitted, _ = await admit_many([other], 10, key)
    assert len(admitted) == 7  # one of the eight is kept by the first node
    await node.give_back_unused(time.monotonic() + LATER)
    await asyncio.sleep(0.1)
    admitted += (await admit_many([other], 3, key))[0]
    assert len(admitted) == 8


async def test_shares_go_back_when_the_node_stops(clients, redis_prefix: str, two_nodes) -> None:
    node = two_nodes()[0]
    key = api_key(rpm_limit=100, concurrency_limit=20)
    for _ in range(3):
        await node.finish(await node.admit(unique_ip(), key), 0)
    entries, slots = await redis_counts(clients[0], redis_prefix, key)
    assert entries > 3 and slots == 1
    await node.close_shares()
    assert await redis_counts(clients[0], redis_prefix, key) == (3, 0)


async def test_a_share_of_zero_asks_redis_every_time(clients, redis_prefix: str, two_nodes) -> None:
    node = two_nodes(share_pct=0)[0]
    key = api_key(rpm_limit=100, concurrency_limit=20)
    for _ in range(5):
        await node.finish(await node.admit(unique_ip(), key), 0)
    assert node.local_admissions == 0
    assert await redis_counts(clients[0], redis_prefix, key) == (5, 0)


async def test_a_kept_slot_redis_lost_is_not_reused(clients, redis_prefix: str, two_nodes) -> None:
    """Redis lost the lease of a slot the node keeps (it could not renew it, or Redis
    restarted): the next renewal notices, and the slot is not handed out again."""
    node, other = two_nodes()
    key = api_key(concurrency_limit=8)
    await node.finish(await node.admit(unique_ip(), key), 0)
    base = f"{redis_prefix}rl:key:{key.id}:"
    await clients[0].delete(base + "conc")
    assert await node.refresh() == 0
    await node.admit(unique_ip(), key)
    assert node.local_admissions == 0  # asked Redis: counted there again
    assert await clients[0].zcard(base + "conc") == 1
    admitted, _ = await admit_many([other], 10, key)
    assert len(admitted) == 7


async def test_an_entry_taken_before_a_round_trip_is_counted_from_its_use(
    clients, redis_prefix: str, two_nodes
) -> None:
    """A reserved entry is taken while the concurrency limit still asks Redis: the
    entry is then counted as used at that admission (Redis time), not as reserved."""
    node = two_nodes()[0]
    key = api_key(rpm_limit=100, concurrency_limit=2)  # 2: no slot is kept
    for _ in range(2):
        await node.finish(await node.admit(unique_ip(), key), 0)
    base = f"{redis_prefix}rl:key:{key.id}:"
    before = dict(await clients[0].zrange(base + "rpm", 0, -1, withscores=True))
    admission = await node.admit(unique_ip(), key)  # an entry + a Redis call
    after = dict(await clients[0].zrange(base + "rpm", 0, -1, withscores=True))
    moved = [m for m in before if after[m] != before[m]]
    assert len(moved) == 1 and after[moved[0]] < before[moved[0]]
    assert admission.token.encode() not in after  # no entry of its own: it used one
    await node.finish(admission, 0)


async def test_a_cancelled_admission_keeps_nothing(clients, redis_prefix: str, two_nodes) -> None:
    """The caller went away while its admission was under way: what Redis reserved for
    the node joins its share (and goes back unused), the slot it took goes back."""
    node = two_nodes()[0]
    key = api_key(rpm_limit=100, concurrency_limit=2)
    await node.finish(await node.admit(unique_ip(), key), 0)  # a run: the next asks
    task = asyncio.create_task(node.admit(unique_ip(), key))
    await asyncio.sleep(0)  # submitted, not answered yet
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)  # the reply arrives
    entries, slots = await redis_counts(clients[0], redis_prefix, key)
    assert entries > 2 and slots == 1
    assert await node.give_back_unused(time.monotonic() + LATER) == entries - 2 + 1
    await asyncio.sleep(0.1)
    assert await redis_counts(clients[0], redis_prefix, key) == (2, 0)


async def test_cancelled_as_its_reply_lands_the_admission_gives_its_slot_back(
    clients, redis_prefix: str, two_nodes
) -> None:
    node, other = two_nodes()
    key = api_key(concurrency_limit=1)
    submit = node._calls.submit
    task: asyncio.Task[Admission] | None = None

    def cancel_on_reply(item: ScriptCall, **kw: bool) -> asyncio.Future[object]:
        future = submit(item, **kw)
        if task is not None:
            future.add_done_callback(lambda _: task.cancel())
        return future

    node._calls.submit = cancel_on_reply  # type: ignore[method-assign]
    task = asyncio.create_task(node.admit(unique_ip(), key))
    with pytest.raises(asyncio.CancelledError):
        await task
    node._calls.submit = submit  # type: ignore[method-assign]
    assert await node.give_back_unused(time.monotonic()) == 1
    await asyncio.sleep(0.1)
    await other.finish(await other.admit(unique_ip(), key), 0)


async def test_an_entry_of_a_cancelled_admission_goes_back_to_redis(
    clients, redis_prefix: str, two_nodes
) -> None:
    """Redis may have counted it as used at that admission: it is not used again."""
    node = two_nodes()[0]
    key = api_key(rpm_limit=100, concurrency_limit=2)  # 2: every request asks Redis
    for _ in range(2):
        await node.finish(await node.admit(unique_ip(), key), 0)
    entries, _ = await redis_counts(clients[0], redis_prefix, key)
    task = asyncio.create_task(node.admit(unique_ip(), key))  # an entry + a call
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    # Its slot and the entry it took go back; the rest of the share stays usable.
    assert await node.give_back_unused(time.monotonic()) == 2
    await asyncio.sleep(0.1)
    assert await redis_counts(clients[0], redis_prefix, key) == (entries - 1, 0)


async def test_lapsed_share_is_given_back_before_a_429(
    clients, redis_prefix: str, two_nodes
) -> None:
    """On one node, a limit refuses at the same point as without shares: entries the
    node reserved and no longer uses go back at once, not at the next tick."""
    node = two_nodes()[0]
    key = api_key(rpm_limit=20)
    for _ in range(2):
        await node.finish(await node.admit(unique_ip(), key), 0)
    entries, _ = await redis_counts(clients[0], redis_prefix, key)
    assert entries > 2  # the second admission reserved some
    await asyncio.sleep(RESERVE_SECONDS + 0.1)  # they lapse, unused
    admitted = 0
    while True:
        try:
            await node.admit(unique_ip(), key)
        except RateLimitError:
            break
        admitted += 1
        assert admitted <= 20
    assert admitted + 2 == 20


async def test_token_counts_of_one_key_share_a_call(clients, redis_prefix: str, two_nodes) -> None:
    """Finishes that only count tokens join the call of the same key still queued:
    one script call carries them all, and the budget holds every token."""
    node = two_nodes()[0]
    key = api_key(rpm_limit=1000, concurrency_limit=400)
    admitted = await asyncio.gather(*(node.admit(unique_ip(), key) for _ in range(40)))
    for admission in admitted:  # slots kept or given back in calls of their own
        await node.finish(admission, 0)
    sent: list[ScriptCall] = []
    send = node._pipe.run

    async def spy(calls: list[ScriptCall]) -> list[object]:
        sent.extend(calls)
        return await send(calls)

    node._pipe.run = spy  # type: ignore[method-assign]
    admitted = [await node.admit(unique_ip(), key) for _ in range(40)]
    sent.clear()
    await asyncio.gather(*(node.finish_later(a, 10 + i) for i, a in enumerate(admitted)))
    assert len(sent) == 1
    assert (await node.usage(key)).used_tokens == sum(10 + i for i in range(40))


async def test_tokens_that_joined_a_failed_call_are_all_reported(
    redis_url: str, redis_prefix: str, made, caplog: pytest.LogCaptureFixture
) -> None:
    async with RedisProxy(redis_url) as proxy:
        client = create_redis(proxy.url)
        node = Limiter(client, redis_prefix, ip_rpm=0, ip_concurrency=0)
        made.append(node)
        try:
            key = api_key(rpm_limit=100)
            admitted = [await node.admit(unique_ip(), key) for _ in range(3)]
            await proxy.cut()
            with caplog.at_level("WARNING", logger="alicode_gw.limits.limiter"):
                await asyncio.gather(
                    *(node.finish_later(a, n) for a, n in zip(admitted, (10, 20, 30), strict=True))
                )
        finally:
            await client.aclose()
    assert "60 token(s) uncounted" in caplog.text


async def test_finishes_still_queued_at_shutdown_are_logged_as_such(
    redis_url: str, redis_prefix: str, made, caplog: pytest.LogCaptureFixture
) -> None:
    async with RedisProxy(redis_url) as proxy:
        client, tasks = create_redis(proxy.url), TaskTracker()
        node = Limiter(client, redis_prefix, ip_rpm=0, ip_concurrency=0, share_pct=0, tasks=tasks)
        made.append(node)
        try:
            key = api_key(concurrency_limit=100)
            sent, queued = [await node.admit(unique_ip(), key) for _ in range(2)]
            proxy.stall()  # Redis stops answering: the first finish stays in flight
            in_flight = node.finish_later(sent, 1, urgent=True)
            await asyncio.sleep(0.05)
            behind = node.finish_later(queued, 2, urgent=True)  # waits for the next batch
            with caplog.at_level("WARNING", logger="alicode_gw.limits.limiter"):
                await tasks.drain(0.05)  # shutdown: the flusher is cancelled
                await behind  # never raises
            with pytest.raises(asyncio.CancelledError):
                await in_flight
        finally:
            proxy.resume()
            await client.aclose()
    assert "could not release limits (Closed)" in caplog.text


def test_format_duration() -> None:
    assert format_duration(8100) == "2h 15m"
    assert format_duration(42.1) == "43s"
    assert format_duration(61) == "2m"
    assert format_duration(5 * 3600) == "5h 0m"


async def test_rpm_429_over_http_with_headers(make_config, db) -> None:
    """Through the real pipeline with the official SDK: the key's X-RateLimit-* on
    success, then a 429 rate_limit_error with Retry-After."""
    import anthropic

    from tests.support.customers import make_customer, own_gateway
    from tests.support.gateway import stop_gateway

    gateway = await own_gateway(db, make_config, "rpm-http")
    customer = await make_customer(db, rpm=2)
    client = anthropic.AsyncAnthropic(api_key=customer.key, base_url=gateway.url, max_retries=0)
    try:
        async with client:
            request = {
                "model": "claude-sonnet-4-6",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
            }
            first = await client.messages.with_raw_response.create(**request)
            assert first.headers["x-ratelimit-limit"] == "2"
            assert first.headers["x-ratelimit-remaining"] == "1"
            await client.messages.create(**request)
            with pytest.raises(anthropic.RateLimitError) as info:
                await client.messages.create(**request)
    finally:
        await stop_gateway(gateway)
    err = info.value
    assert err.body["error"]["type"] == "rate_limit_error"
    assert err.request_id and err.request_id.startswith("req_")
    assert 1 <= int(err.response.headers["retry-after"]) <= 60
    assert err.response.headers["x-ratelimit-remaining"] == "0"
