"""The node's shares of limit capacity, as pure bookkeeping (a fake clock: ``now``)."""

from __future__ import annotations

from alicode_gw.limits.shares import GRANT_MAX, GRANT_MIN, KEEP_SECONDS, RESERVE_SECONDS, Shares

LOG, SLOTS = "rl:key:1:rpm", "rl:key:1:conc"


def test_reserved_entries_are_used_until_their_deadline_then_go_back() -> None:
    shares = Shares(25)
    assert shares.take_entry(LOG, 0.0) is None
    assert not shares.ask(LOG, 0.0)  # no request of this set seen yet
    shares.reserved(LOG, [], 0.0 + RESERVE_SECONDS, (40, 9000), now=0.0)
    assert shares.ask(LOG, 1.0)  # a second request in the run: ask for a share
    assert not shares.ask(LOG, 1.0)  # one reservation under way at a time
    shares.asked(LOG)
    shares.reserved(LOG, ["t:1", "t:2", "t:3"], 1.0 + RESERVE_SECONDS, (30, 9000), now=1.0)
    assert shares.view(LOG) == (33, 9000)
    assert shares.unused(LOG) == 3
    assert shares.take_entry(LOG, 1.5) == ("t:1", 1.0 + RESERVE_SECONDS)
    assert shares.view(LOG) == (32, 9000)
    # Past the deadline an entry is no longer used: it goes back to Redis instead.
    assert shares.take_entry(LOG, 1.0 + RESERVE_SECONDS) is None
    assert shares.expired(1.0 + RESERVE_SECONDS) == [(LOG, "t:2"), (LOG, "t:3")]
    assert shares.unused(LOG) == 0


def test_an_entry_given_back_is_used_next() -> None:
    shares = Shares(25)
    shares.reserved(LOG, ["t:1", "t:2"], 10.0, (5, 0), now=0.0)
    member, deadline = shares.take_entry(LOG, 1.0) or ("", 0.0)
    shares.put_entry(LOG, member, deadline)
    assert shares.take_entry(LOG, 1.0) == ("t:1", 10.0)
    assert shares.holds(LOG, 9.9) and not shares.holds(LOG, 10.0)


def test_expired_keeps_what_is_valid_and_forgets_idle_sets() -> None:
    shares = Shares(25)
    shares.reserved(LOG, ["a:1"], 2.0, (5, 0), now=0.0)
    shares.reserved(LOG, ["b:1"], 4.0, (5, 0), now=1.5)
    assert shares.expired(3.0) == [(LOG, "a:1")]
    assert shares.expired(3.4) == []
    assert shares.ask(LOG, 3.4)  # the run goes on: last request 1.9 s ago
    shares.asked(LOG)
    assert shares.expired(4.0) == [(LOG, "b:1")]
    assert not shares.ask(LOG, 4.0)  # nothing left, no request for 2.5 s: forgotten


def test_kept_slots_are_capped_by_the_share_and_go_back_when_idle() -> None:
    shares = Shares(25)
    assert shares.keep_cap(3) == 0 and shares.keep_cap(8) == 2
    assert not shares.keep_slot(SLOTS, 3, ("x", 0.0), 0.0)  # a small limit keeps nothing
    assert shares.keep_slot(SLOTS, 8, ("s1", 0.0), 0.0)
    assert shares.keep_slot(SLOTS, 8, ("s2", 0.0), 0.5)
    assert not shares.keep_slot(SLOTS, 8, ("s3", 0.0), 0.5)  # two of eight at most
    assert shares.kept_slots() == [(SLOTS, "s1"), (SLOTS, "s2")]
    assert shares.holds(SLOTS, 1.0) and not shares.holds("rl:key:2:conc", 1.0)
    assert shares.take_slot(SLOTS, 8, 1.0) == ("s2", 0.0)
    assert shares.keep_slot(SLOTS, 8, ("s2", 0.0), 1.0)
    assert shares.expired(KEEP_SECONDS) == [(SLOTS, "s1")]
    assert shares.take_slot(SLOTS, 8, 2.5) == ("s2", 0.0)
    assert shares.take_slot(SLOTS, 8, 2.5) is None
    assert shares.keep_slot(SLOTS, 8, ("s2", 0.0), 3.0)
    assert shares.keep_slot(SLOTS, 8, ("s4", 0.0), 3.0)
    assert shares.keep_slot(SLOTS, 8, ("s5", 0.0), 3.0, force=True)  # back from a failure


def test_a_slot_whose_lease_was_not_confirmed_lately_is_not_reused() -> None:
    shares = Shares(25, lease_seconds=30)  # reused while confirmed in the last 15 s
    assert not shares.keep_slot(SLOTS, 8, ("old", 0.0), 15.0)
    assert shares.keep_slot(SLOTS, 8, ("a", 0.0), 14.0)
    assert shares.take_slot(SLOTS, 8, 15.0) is None  # too old by now: given back instead
    assert shares.expired(15.0) == [(SLOTS, "a")]
    # A renewal confirms a kept slot, or forgets one that Redis no longer had.
    assert shares.keep_slot(SLOTS, 8, ("b", 0.0), 10.0)
    assert shares.keep_slot(SLOTS, 8, ("c", 0.0), 10.0)
    shares.confirmed({(SLOTS, "b"): True, (SLOTS, "c"): False}, at=11.0)
    assert shares.kept_slots() == [(SLOTS, "b")]
    assert shares.take_slot(SLOTS, 8, 20.0) == ("b", 11.0)
    # "c" was in use when the renewal did not find it: not kept when its request ends.
    assert not shares.keep_slot(SLOTS, 8, ("c", 11.0), 12.0)


def test_slots_kept_under_another_limit_go_back() -> None:
    shares = Shares(25)
    assert shares.keep_slot(SLOTS, 8, ("s1", 0.0), 0.0)
    assert shares.take_slot(SLOTS, 4, 0.0) is None  # the key's limit changed
    assert shares.expired(0.1) == [(SLOTS, "s1")]
    assert shares.keep_slot(SLOTS, 8, ("s2", 0.0), 0.0)
    assert shares.keep_slot(SLOTS, 12, ("s3", 0.0), 0.0)
    assert shares.everything() == [(SLOTS, "s2"), (SLOTS, "s3")]


def test_stale_gives_back_one_set_at_once() -> None:
    shares = Shares(25)
    shares.reserved(LOG, ["t:1", "t:2"], 2.0, (5, 0), now=0.0)
    shares.lapse("other", "x")
    shares.put_entry(LOG, "late", 9.0)  # given back first, though valid longer
    assert shares.stale(LOG, 2.0) == [(LOG, "t:1"), (LOG, "t:2")]
    assert shares.take_entry(LOG, 2.0) == ("late", 9.0)
    assert shares.expired(2.0) == [("other", "x")]


def test_a_set_with_a_reservation_under_way_is_not_forgotten() -> None:
    shares = Shares(25)
    shares.reserved(LOG, [], 2.0, (5, 0), now=0.0)
    assert shares.ask(LOG, 1.0)
    assert shares.expired(5.0) == []
    shares.asked(LOG)
    shares.reserved(LOG, ["t:1"], 7.0, (5, 0), now=5.0)
    assert shares.take_entry(LOG, 5.0) == ("t:1", 7.0)


def test_everything_takes_all_out() -> None:
    shares = Shares(25)
    shares.reserved(LOG, ["t:1", "t:2"], 5.0, (1, 0), now=0.0)
    shares.keep_slot(SLOTS, 40, ("s", 0.0), 0.0)
    assert shares.everything() == [(LOG, "t:1"), (LOG, "t:2"), (SLOTS, "s")]
    assert shares.everything() == [] and shares.unused(LOG) == 0


def test_a_share_of_zero_holds_nothing() -> None:
    shares = Shares(0)
    shares.reserved(LOG, [], 5.0, (1, 0), now=0.0)
    assert not shares.ask(LOG, 0.1)
    assert not shares.keep_slot(SLOTS, 1000, ("s", 0.0), 0.0)
    assert shares.everything() == []


def _reserve(shares: Shares, now: float, prefix: str) -> int:
    """One reservation as the limiter makes it: ask, then the reply with what was
    asked for (the limit has plenty left); returns how many entries were asked for."""
    wanted = shares.ask(LOG, now)
    shares.asked(LOG)
    members = [f"{prefix}:{n}" for n in range(wanted)]
    shares.reserved(LOG, members, now + RESERVE_SECONDS, (10**6, 0), now=now)
    return wanted


def test_reservations_grow_with_a_fast_set_and_shrink_with_a_slow_one() -> None:
    shares = Shares(25)
    shares.reserved(LOG, [], RESERVE_SECONDS, (10**6, 0), now=0.0)  # a first request
    now, asked = 0.01, []
    for round_ in range(5):  # fast: every reservation is used up well within its 2 s
        asked.append(_reserve(shares, now, f"r{round_}"))
        while shares.take_entry(LOG, now) is not None:
            now += 0.001
        now += 0.001
    assert asked == [GRANT_MIN, 2 * GRANT_MIN, 4 * GRANT_MIN, GRANT_MAX, GRANT_MAX]
    # Slow: one request per second uses 2 of each reservation, the rest lapses.
    asked = []
    for round_ in range(4):
        asked.append(_reserve(shares, now, f"s{round_}"))
        for _ in range(2):
            assert shares.take_entry(LOG, now) is not None
            now += 1.0
        assert shares.take_entry(LOG, now) is None  # lapsed: the tick returns them
        shares.expired(now)
    assert asked == [GRANT_MAX, GRANT_MAX // 2, GRANT_MAX // 4, GRANT_MIN]
    assert _reserve(shares, now, "t") == GRANT_MIN  # never below the minimum
