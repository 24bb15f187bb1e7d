"""The seat ledger: unit tests and a stateful property test of its one invariant."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from floatkeyd.borrowing import BorrowRules
from floatkeyd.ledger import Denied, Granted, Lease, Queued, SeatLedger, SeatLimits, Waiter

LEASE_MS = 60_000
LIMITS = SeatLimits(per_login=2)
BORROW_RULES = BorrowRules(enabled=True, max_ms=3 * LEASE_MS, max_borrowed=2, keep_on_site=1)


def ledger(seats: int = 2, mode: str = "licensed") -> SeatLedger:
    return SeatLedger(mode, seats, 1, LEASE_MS)  # type: ignore[arg-type]


def test_grants_up_to_the_seats_then_denies_with_a_sentence():
    book = ledger(2)
    assert isinstance(book.request("a", 0), Granted)
    assert isinstance(book.request("b", 0), Granted)
    denied = book.request("c", 0)
    assert isinstance(denied, Denied)
    assert denied.reason == "seats_exhausted"
    assert denied.message.startswith("All 2 seats are in use.")
    assert (denied.seats, denied.in_use) == (2, 2)


def test_asking_again_gets_the_same_seat_under_a_new_secret():
    book = ledger(1)
    first = book.request("a", 0)
    again = book.request("a", 10)
    assert isinstance(first, Granted)
    assert isinstance(again, Granted)
    assert again.lease.token != first.lease.token  # a lease's secret is sent only once
    assert not again.fresh
    assert book.in_use == 1
    assert book.renew("a", first.lease.token, 20) is None
    assert book.renew("a", again.lease.token, 20) is again.lease


def test_renew_needs_the_token_and_extends_the_lease():
    book = ledger(1)
    granted = book.request("a", 0)
    assert isinstance(granted, Granted)
    assert book.renew("a", "wrong", 10) is None
    renewed = book.renew("a", granted.lease.token, 1000)
    assert renewed is not None
    assert renewed.expires_at == 1000 + LEASE_MS


def test_release_frees_the_seat_and_needs_the_right_token():
    book = ledger(1)
    granted = book.request("a", 0)
    assert isinstance(granted, Granted)
    assert book.release("a", "not-it") is None
    assert book.in_use == 1
    assert book.release("a", granted.lease.token) is granted.lease
    assert book.in_use == 0
    assert isinstance(book.request("b", 0), Granted)


def test_leases_expire_unless_renewed():
    book = ledger(2)
    a = book.request("a", 0)
    book.request("b", 0)
    assert isinstance(a, Granted)
    book.renew("a", a.lease.token, 30_000)
    assert book.next_expiry() == LEASE_MS
    gone = book.expire(LEASE_MS)
    assert [lease.client for lease in gone] == ["b"]
    assert book.next_expiry() == 30_000 + LEASE_MS
    assert book.in_use == 1


def test_a_will_keeps_the_seat_for_the_grace_then_frees_it():
    book = ledger(1)
    granted = book.request("a", 0)
    assert isinstance(granted, Granted)
    assert book.orphan("a", 1000, 5000) is None
    assert book.in_use == 1
    assert book.next_expiry() == 6000
    # Renewed within the grace (the broker only restarted): kept.
    assert book.renew("a", granted.lease.token, 3000) is not None
    assert book.expire(6000) == []
    book.orphan("a", 10_000, 5000)
    assert [lease.client for lease in book.expire(15_000)] == ["a"]
    assert book.in_use == 0


def test_unlicensed_sessions_are_not_limited_and_have_no_seat():
    book = ledger(0, mode="unlicensed")
    for client in "abcde":
        granted = book.request(client, 0)
        assert isinstance(granted, Granted)
        assert not granted.lease.licensed
    assert book.in_use == 0


def test_an_expired_license_denies_with_its_own_reason():
    book = ledger(5, mode="expired")
    denied = book.request("a", 0)
    assert isinstance(denied, Denied)
    assert denied.reason == "expired"
    assert "expired" in denied.message


def test_a_new_license_revokes_every_lease_which_then_awaits_release():
    book = ledger(2, mode="unlicensed")
    a = book.request("a", 0)
    book.request("b", 0)
    revoked = book.change_license("licensed", 1, 2)
    assert sorted(lease.client for lease in revoked) == ["a", "b"]
    assert all(lease.revoked for lease in revoked)
    assert book.leases == {}
    assert set(book.revoked) == {"a", "b"}
    assert isinstance(a, Granted)
    assert book.release("a", a.lease.token) is not None
    assert set(book.revoked) == {"b"}
    # A revoked client asking again gets a seat of the new generation.
    again = book.request("b", 5)
    assert isinstance(again, Granted)
    assert again.lease.generation == 2
    assert book.revoked == {}
    assert isinstance(book.request("c", 5), Denied)


def test_restore_puts_old_generations_among_the_revoked():
    book = ledger(2)
    book.restore(Lease("old", "t1", 0, licensed=True, since=0, expires_at=LEASE_MS))
    book.restore(Lease("cur", "t2", 1, licensed=True, since=0, expires_at=LEASE_MS))
    assert set(book.revoked) == {"old"}
    assert set(book.leases) == {"cur"}
    assert book.in_use == 1


class LedgerMachine(RuleBasedStateMachine):
    """Random interleavings of everything that touches seats: never an oversell."""

    def __init__(self) -> None:
        super().__init__()
        self.book = self.fresh("licensed", 3, 1)
        self.now = 0
        self.tokens: dict[str, str] = {}
        self.queue_tokens: dict[str, str] = {}
        # Every grant to a waiter, in order, with the queue as it was just before.
        self.order_checked = 0
        # Borrowed seats granted and not returned: client -> (token, end, generation).
        self.borrows: dict[str, tuple[str, int, int]] = {}

    @staticmethod
    def fresh(mode: str, seats: int, generation: int) -> SeatLedger:
        return SeatLedger(
            mode,  # type: ignore[arg-type]
            seats,
            generation,
            LEASE_MS,
            limits=LIMITS,
            queue_max=4,
            queue_max_wait_ms=3 * LEASE_MS,
            idle_ms=LEASE_MS // 2,
            idle_warning_ms=LEASE_MS // 4,
            borrow_rules=BORROW_RULES,
        )

    def drain(self, before: list[str]) -> None:
        """Grants to waiters went in queue order, passing over only waiters at their cap."""
        promoted = [w.client for w, _ in self.book.take_promoted()]
        self.book.take_unqueued()
        assert promoted == [c for c in before if c in promoted]  # first in, first out
        if not promoted:
            return
        logins = [lease.login for lease in self.book.leases.values() if lease.licensed]
        for client in before[: before.index(promoted[-1])]:
            waiter = self.book.queue.get(client)
            if waiter is not None:  # passed over: its login held all it may
                assert logins.count(waiter.login) >= LIMITS.per_login

    clients = st.sampled_from([f"c{i}" for i in range(8)])

    @rule(
        client=clients,
        login=st.sampled_from(["l1", "l2"]),
        wait=st.booleans(),
        active=st.booleans(),
    )
    def request(self, client: str, login: str, wait: bool, active: bool) -> None:
        before = list(self.book.queue)
        result = self.book.request(
            client, self.now, login=login, wait=wait, active_at=self.now if active else None
        )
        if isinstance(result, Granted):
            self.tokens[client] = result.lease.token
        elif isinstance(result, Queued):
            self.queue_tokens[client] = result.waiter.token
            assert result.ahead == list(self.book.queue).index(client)
            if result.fresh:
                assert list(self.book.queue)[-1] == client  # a newcomer joins at the end
            else:
                assert [c for c in before if c in self.book.queue] == list(self.book.queue)
        self.drain(before)

    @rule(client=clients, queued=st.booleans(), active=st.booleans())
    def renew(self, client: str, queued: bool, active: bool) -> None:
        tokens = self.queue_tokens if queued else self.tokens
        kept = self.book.renew(
            client, tokens.get(client, "none"), self.now, self.now if active else None
        )
        if active and isinstance(kept, Lease):
            assert kept.active_at == self.now  # the activity is tracked (after a restart too)

    @rule(client=clients, with_token=st.booleans())
    def release(self, client: str, with_token: bool) -> None:
        before = list(self.book.queue)
        freed = self.book.release(client, self.tokens.get(client) if with_token else None, self.now)
        if freed is not None and freed.borrowed:  # an administrator's release
            self.borrows.pop(client, None)
        self.drain(before)

    @rule(
        client=clients,
        login=st.sampled_from(["l1", "l2"]),
        ms=st.integers(1, 4 * LEASE_MS),
    )
    def borrow(self, client: str, login: str, ms: int) -> None:
        before = list(self.book.queue)
        result = self.book.borrow(client, self.now, ms, login=login)
        if isinstance(result, Granted):
            assert result.lease.borrowed
            assert result.lease.expires_at == self.now + ms
            assert ms <= BORROW_RULES.max_ms
            self.borrows[client] = (result.lease.token, self.now + ms, self.book.generation)
            self.tokens[client] = result.lease.token
        elif isinstance(result, Denied) and client in self.book.leases:
            # One borrowed seat per client: never a second, never replaced.
            assert not self.book.leases[client].borrowed or result.reason == "already_borrowed"
        elif isinstance(result, Denied) and result.reason == "seat_held":
            assert client in self.book.leases or client in self.book.queue
        self.drain(before)

    @rule(client=clients, with_token=st.booleans())
    def cancel(self, client: str, with_token: bool) -> None:
        before = list(self.book.queue)
        self.book.cancel(client, self.queue_tokens.get(client) if with_token else None)
        assert [c for c in before if c != client] == list(self.book.queue)

    @rule(client=clients)
    def will(self, client: str) -> None:
        ends = {c: lease.expires_at for c, lease in self.book.leases.items() if lease.borrowed}
        self.book.orphan_waiter(client, self.now, 5000)
        self.book.orphan(client, self.now, 5000)
        # The borrowing connection's will: the borrow goes on offline, to its end.
        assert ends == {c: lease.expires_at for c, lease in self.book.leases.items() if c in ends}

    @rule(client=clients)
    def give_back(self, client: str) -> None:
        """The agent returns its borrowed seat early: freed at once."""
        held = self.borrows.get(client)
        if held is None:
            return
        before = list(self.book.queue)
        freed = self.book.release(client, held[0], self.now)
        assert freed is not None
        assert freed.borrowed
        del self.borrows[client]
        assert client not in self.book.leases
        assert client not in self.book.revoked
        self.drain(before)

    @rule(ms=st.integers(0, LEASE_MS))
    def broker_outage(self, ms: int) -> None:
        """Nothing expires while the broker is away; the time is given back after it."""
        ends = {c: lease.expires_at for c, lease in self.book.leases.items() if lease.borrowed}
        self.now += ms
        self.book.extend_all(ms)
        # A borrow's end is in its signed token: an outage does not move it.
        assert ends == {c: lease.expires_at for c, lease in self.book.leases.items() if c in ends}
        self.time_passes(0)

    @rule(ms=st.integers(0, 2 * LEASE_MS))
    def time_passes(self, ms: int) -> None:
        self.now += ms
        before = list(self.book.queue)
        gone = self.book.expire(self.now)
        for lease in gone:
            if lease.borrowed:  # freed at its end by the daemon's own clock
                assert lease.expires_at <= self.now
                self.borrows.pop(lease.client, None)
        self.drain(before)
        before = list(self.book.queue)
        warned, reclaimed = self.book.idle(self.now)
        assert all(lease.warned_at == self.now for lease in warned)
        # Never reclaimed unwarned, nor sooner than the warning's time after it.
        assert all(
            lease.warned_at is not None and self.now >= lease.warned_at + self.book.idle_warning_ms
            for lease in reclaimed
        )
        assert not {lease.client for lease in reclaimed} & set(self.book.leases)
        self.drain(before)

    @rule(seats=st.integers(1, 5), mode=st.sampled_from(["licensed", "expired", "unlicensed"]))
    def new_license(self, seats: int, mode: str) -> None:
        queued = set(self.book.queue)
        self.book.change_license(mode, seats, self.book.generation + 1)  # type: ignore[arg-type]
        assert self.book.queue == {}
        assert {u.waiter.client for u in self.book.take_unqueued()} == queued

    @rule()
    def restart(self) -> None:
        leases = [*self.book.leases.values(), *self.book.revoked.values()]
        waiters = sorted(self.book.queue.values(), key=lambda w: w.seq)
        book = self.fresh(self.book.mode, self.book.seats, self.book.generation)
        for lease in leases:
            # What the leases table keeps: no activity times.
            kept = {f: getattr(lease, f) for f in Lease.__dataclass_fields__}
            book.restore(Lease(**{**kept, "active_at": None, "warned_at": None}))
        for waiter in waiters:
            book.restore_waiter(
                Waiter(**{f: getattr(waiter, f) for f in Waiter.__dataclass_fields__})
            )
        assert list(book.queue) == [w.client for w in waiters]
        self.book = book

    @invariant()
    def no_waiter_starves_while_a_seat_is_free(self) -> None:
        book = self.book
        if book.mode != "licensed":
            assert book.queue == {}
            return
        if book.in_use < book.seats:
            logins = [lease.login for lease in book.leases.values() if lease.licensed]
            for waiter in book.queue.values():
                # Only a waiter whose login is at its cap, or whose will came (passed over
                # while its grace runs), may wait beside a free seat.
                assert waiter.orphaned or logins.count(waiter.login) >= LIMITS.per_login

    @invariant()
    def a_client_waits_or_holds_never_both(self) -> None:
        assert not set(self.book.queue) & set(self.book.leases)
        assert len(self.book.queue) <= 4
        assert all(w.generation == self.book.generation for w in self.book.queue.values())
        seqs = [w.seq for w in self.book.queue.values()]
        assert seqs == sorted(seqs)  # first in, first out

    def lent_before(self) -> int:
        """Seats borrowed under an earlier license, still counted."""
        book = self.book
        return sum(1 for x in book.leases.values() if x.borrowed and x.generation < book.generation)

    @invariant()
    def never_more_licensed_leases_than_seats(self) -> None:
        licensed = [lease for lease in self.book.leases.values() if lease.licensed]
        assert len(licensed) == self.book.in_use
        if self.book.mode == "licensed":
            # Seats borrowed under a bigger license may hold more than a new one has:
            # then nothing more is granted until they go.
            assert self.book.in_use <= max(self.book.seats, self.lent_before())

    @invariant()
    def no_login_holds_more_than_its_cap(self) -> None:
        for login in ("l1", "l2"):
            held = [
                lease
                for lease in self.book.leases.values()
                if lease.licensed and lease.login == login
            ]
            assert len(held) <= LIMITS.per_login

    @invariant()
    def current_leases_are_of_the_current_generation(self) -> None:
        # A borrowed seat keeps its generation: its laptop runs on under its token.
        assert all(
            lease.generation == self.book.generation
            or (lease.borrowed and lease.generation < self.book.generation)
            for lease in self.book.leases.values()
        )
        assert all(lease.revoked for lease in self.book.revoked.values())
        assert not set(self.book.leases) & set(self.book.revoked)

    @invariant()
    def borrowed_seats_are_counted_until_returned_or_ended(self) -> None:
        book = self.book
        borrowed = [lease for lease in book.leases.values() if lease.borrowed]
        assert len(borrowed) == book.borrowed
        if book.mode == "licensed":
            limit = max(book.seats - BORROW_RULES.keep_on_site, 0)
            assert book.borrowed <= max(limit, self.lent_before())
            assert book.borrowed <= BORROW_RULES.max_borrowed
        for client, (token, end, generation) in self.borrows.items():
            assert end > self.now  # one at its end was freed when the time came
            lease = book.leases.get(client) or book.revoked.get(client)
            assert lease is not None
            assert lease.token == token
            assert lease.borrowed
            assert lease.expires_at == end
            # Counted in in_use and borrowed, also after a new license: its laptop runs
            # on under its token, until it ends, is returned, or learns of the change.
            assert lease is book.leases.get(client)
            assert lease.generation == generation
            assert not lease.revoked

    @invariant()
    def nothing_outlives_its_lease(self) -> None:
        every = [*self.book.leases.values(), *self.book.revoked.values()]
        assert all(lease.expires_at > self.now for lease in every)
        assert all(w.expires_at > self.now for w in self.book.queue.values())


LedgerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestLedger = LedgerMachine.TestCase


def test_limits_cap_licensed_seats_per_login_host_and_user():
    book = ledger(10)
    book.limits = SeatLimits(per_login=3, per_host=2, per_user=1)
    assert isinstance(book.request("a", 0, login="l1", host="h1", user="u1"), Granted)
    # The same user elsewhere: the user cap.
    denied = book.request("b", 0, login="l1", host="h2", user="u1")
    assert isinstance(denied, Denied)
    assert (denied.reason, denied.in_use) == ("limit_reached", 1)
    assert "user 'u1'" in denied.message
    assert isinstance(book.request("b", 0, login="l1", host="h1", user="u2"), Granted)
    denied = book.request("c", 0, login="l1", host="h1", user="u3")  # the host cap
    assert isinstance(denied, Denied)
    assert "host 'h1'" in denied.message
    assert isinstance(book.request("c", 0, login="l1", host="h3", user="u3"), Granted)
    denied = book.request("d", 0, login="l1", host="h4", user="u4")  # the login cap
    assert isinstance(denied, Denied)
    assert "login 'l1'" in denied.message
    assert isinstance(book.request("d", 0, login="l2", host="h4", user="u4"), Granted)
    # A released seat frees its login's, host's and user's share.
    assert book.release("a") is not None
    assert isinstance(book.request("e", 0, login="l1", host="h1", user="u1"), Granted)
    # A new license starts every count again.
    book.change_license("licensed", 10, 2)
    assert isinstance(book.request("a", 0, login="l1", host="h1", user="u1"), Granted)


def queue_ledger(seats: int = 1, queue_max: int = 3) -> SeatLedger:
    return SeatLedger("licensed", seats, 1, LEASE_MS, queue_max=queue_max)


def test_a_waiter_is_queued_then_granted_when_a_seat_frees():
    book = queue_ledger(1)
    a = book.request("a", 0)
    assert isinstance(a, Granted)
    b = book.request("b", 1, wait=True, nonce="nb")
    c = book.request("c", 2, wait=True, nonce="nc")
    assert isinstance(b, Queued)
    assert isinstance(c, Queued)
    assert (b.ahead, c.ahead, c.seats, c.in_use) == (0, 1, 1, 1)
    assert list(book.queue) == ["b", "c"]
    book.release("a", a.lease.token, 10)
    promoted = book.take_promoted()
    assert [(w.client, w.nonce) for w, _ in promoted] == [("b", "nb")]
    assert promoted[0][1] is book.leases["b"]
    assert list(book.queue) == ["c"]
    assert book.ahead("c") == 0


def test_without_asking_to_wait_nothing_changes():
    book = queue_ledger(1)
    book.request("a", 0)
    denied = book.request("b", 0)
    assert isinstance(denied, Denied)
    assert denied.reason == "seats_exhausted"
    assert book.queue == {}


def test_a_full_queue_denies_with_a_sentence():
    book = queue_ledger(1, queue_max=1)
    book.request("a", 0)
    assert isinstance(book.request("b", 0, wait=True), Queued)
    denied = book.request("c", 0, wait=True)
    assert isinstance(denied, Denied)
    assert denied.reason == "queue_full"
    assert "1 clients already wait" in denied.message


def test_asking_again_keeps_the_place_under_a_new_token():
    book = queue_ledger(1)
    book.request("a", 0)
    first = book.request("b", 0, wait=True)
    book.request("c", 0, wait=True)
    again = book.request("b", 5, wait=True)
    assert isinstance(first, Queued)
    assert isinstance(again, Queued)
    assert not again.fresh
    assert again.ahead == 0
    assert again.waiter.token != first.waiter.token
    assert again.waiter.since == 0


def test_waiters_renew_leave_and_time_out():
    book = queue_ledger(1)
    book.queue_max_wait_ms = 5 * LEASE_MS
    book.request("a", 0)
    b = book.request("b", 0, wait=True)
    c = book.request("c", 0, wait=True)
    assert isinstance(b, Queued)
    assert isinstance(c, Queued)
    assert book.renew("b", b.waiter.token, LEASE_MS // 2) is b.waiter
    assert book.cancel("c", "wrong") is None
    assert book.cancel("c", c.waiter.token) is c.waiter
    book.request("a", LEASE_MS // 2)  # a renews by asking again; b renews
    book.renew("b", b.waiter.token, LEASE_MS)
    book.expire(LEASE_MS + 1)
    assert list(book.queue) == ["b"]
    book.expire(2 * LEASE_MS)  # b did not renew again
    assert book.queue == {}
    assert [(u.waiter.client, u.reason) for u in book.take_unqueued()] == [("b", "expiry")]


def test_a_waiter_that_waits_too_long_is_told_queue_timeout():
    book = queue_ledger(1)
    book.queue_max_wait_ms = 1000
    book.request("a", 0)
    b = book.request("b", 0, wait=True)
    assert isinstance(b, Queued)
    assert book.next_expiry() == 1000
    book.expire(1000)
    assert [(u.waiter.client, u.reason) for u in book.take_unqueued()] == [("b", "queue_timeout")]


def test_a_new_license_clears_the_queue():
    book = queue_ledger(1)
    book.request("a", 0)
    book.request("b", 0, wait=True)
    book.change_license("licensed", 5, 2)
    assert book.queue == {}
    assert [(u.waiter.client, u.reason) for u in book.take_unqueued()] == [("b", "license_changed")]


def test_an_idle_seat_is_warned_then_reclaimed_and_goes_to_a_waiter():
    book = queue_ledger(1)
    book.idle_ms, book.idle_warning_ms = 10_000, 4000
    a = book.request("a", 0, active_at=0)
    assert isinstance(a, Granted)
    book.request("b", 0, wait=True)
    assert book.next_idle() == 6000
    assert book.idle(5999) == ([], [])
    warned, reclaimed = book.idle(6000)
    assert [lease.client for lease in warned] == ["a"]
    assert book.reclaim_at(a.lease) == 10_000
    assert book.idle(7000) == ([], [])  # warned once
    warned, reclaimed = book.idle(10_000)
    assert [lease.client for lease in reclaimed] == ["a"]
    assert [w.client for w, _ in book.take_promoted()] == ["b"]


def test_activity_after_the_warning_keeps_the_seat():
    book = queue_ledger(1)
    book.idle_ms, book.idle_warning_ms = 10_000, 4000
    a = book.request("a", 0, active_at=0)
    assert isinstance(a, Granted)
    book.idle(6000)
    assert a.lease.warned_at == 6000
    book.renew("a", a.lease.token, 6500, active_at=6400)
    assert a.lease.warned_at is None
    assert book.idle(10_000) == ([], [])
    assert book.next_idle() == 6400 + 6000


def test_agents_that_do_not_report_activity_are_never_idle():
    book = queue_ledger(1)
    book.idle_ms, book.idle_warning_ms = 10_000, 4000
    book.request("a", 0)
    assert book.next_idle() is None
    assert book.idle(10**9) == ([], [])


def test_a_seat_checked_late_is_warned_first_and_reclaimed_only_after_the_warning():
    book = queue_ledger(1)
    book.idle_ms, book.idle_warning_ms = 10_000, 4000
    a = book.request("a", 0, active_at=0)
    assert isinstance(a, Granted)
    warned, reclaimed = book.idle(50_000)  # long past idle_ms: warned, not reclaimed
    assert ([lease.client for lease in warned], reclaimed) == (["a"], [])
    assert book.reclaim_at(a.lease) == book.next_idle() == 54_000
    assert book.idle(53_999) == ([], [])
    assert [lease.client for lease in book.idle(54_000)[1]] == ["a"]


def test_without_warning_time_a_seat_is_warned_then_reclaimed_at_the_next_check():
    book = queue_ledger(1)
    book.idle_ms, book.idle_warning_ms = 10_000, 0
    book.request("a", 0, active_at=0)
    warned, reclaimed = book.idle(10_000)
    assert ([lease.client for lease in warned], reclaimed) == (["a"], [])
    assert [lease.client for lease in book.idle(10_000)[1]] == ["a"]


def test_a_broker_outage_given_back_is_not_idleness():
    book = queue_ledger(1)
    book.idle_ms, book.idle_warning_ms = 10_000, 4000
    a = book.request("a", 0, active_at=0)
    assert isinstance(a, Granted)
    book.idle(6000)
    book.extend_all(20_000)
    assert (a.lease.active_at, a.lease.warned_at) == (20_000, 26_000)
    assert book.idle(29_999) == ([], [])
    assert book.reclaim_at(a.lease) == 30_000


def test_activity_is_tracked_again_after_a_restart():
    book = queue_ledger(1)
    book.idle_ms, book.idle_warning_ms = 10_000, 4000
    a = book.request("a", 0, active_at=0)
    assert isinstance(a, Granted)
    # Restored from the leases table, which keeps no activity times.
    restored = queue_ledger(1)
    restored.idle_ms, restored.idle_warning_ms = 10_000, 4000
    restored.restore(Lease(**{**{f: getattr(a.lease, f) for f in Lease.__dataclass_fields__},
                             "active_at": None, "warned_at": None}))  # fmt: skip
    lease = restored.renew("a", a.lease.token, 5000, active_at=4000)
    assert isinstance(lease, Lease)
    assert lease.active_at == 4000
    assert restored.next_idle() == 4000 + 6000


def test_a_waiter_whose_will_came_is_passed_over_until_it_is_back():
    """A seat is not given to a client that may be dead: it would sit unused a whole lease."""
    book = SeatLedger("licensed", 1, 1, 30_000, queue_max=3)
    held = book.request("a", 0)
    assert isinstance(held, Granted)
    first = book.request("b", 0, wait=True)
    second = book.request("c", 0, wait=True)
    assert isinstance(first, Queued)
    assert isinstance(second, Queued)
    book.orphan_waiter("b", 1_000, grace_ms=5_000)  # b's will: its grace runs
    assert book.release("a", held.lease.token, 2_000) is not None
    [(granted, _)] = book.take_promoted()
    assert granted.client == "c"  # b is passed over, keeping its place
    assert list(book.queue) == ["b"]
    assert book.renew("b", first.waiter.token, 3_000) is first.waiter  # back in the grace
    assert not first.waiter.orphaned


def borrow_ledger(seats: int = 4, **rules: int | bool) -> SeatLedger:
    book = ledger(seats)
    book.borrow_rules = BorrowRules(**{"enabled": True, "max_ms": 3 * LEASE_MS, **rules})  # type: ignore[arg-type]
    return book


def test_each_borrow_limit_refuses_with_its_reason_and_a_sentence():
    off = ledger(4)
    refused = off.borrow("a", 0, LEASE_MS)
    assert isinstance(refused, Denied)
    assert refused.reason == "borrow_disabled"
    assert "[borrow] enabled" in refused.message
    book = borrow_ledger(4, max_borrowed=1, keep_on_site=2)
    refused = book.borrow("a", 0, 4 * LEASE_MS)
    assert isinstance(refused, Denied)
    assert refused.reason == "borrow_too_long"
    assert "at most" in refused.message
    assert isinstance(book.borrow("a", 0, LEASE_MS), Granted)
    refused = book.borrow("b", 0, LEASE_MS)
    assert isinstance(refused, Denied)
    assert refused.reason == "borrow_limit"
    book = borrow_ledger(3, keep_on_site=2)
    assert isinstance(book.borrow("a", 0, LEASE_MS), Granted)
    refused = book.borrow("b", 0, LEASE_MS)
    assert isinstance(refused, Denied)
    assert refused.reason == "on_site_reserved"
    assert "kept for computers on the network" in refused.message
    refused = book.borrow("a", 0, LEASE_MS)
    assert isinstance(refused, Denied)
    assert refused.reason == "already_borrowed"
    book = borrow_ledger(1)
    assert isinstance(book.request("x", 0), Granted)
    refused = book.borrow("b", 0, LEASE_MS)
    assert isinstance(refused, Denied)
    assert refused.reason == "seats_exhausted"
    unlicensed = borrow_ledger(2)
    unlicensed.mode = "unlicensed"
    refused = unlicensed.borrow("a", 0, LEASE_MS)
    assert isinstance(refused, Denied)
    assert refused.reason == "unlicensed"


def test_a_borrowed_seat_is_counted_until_its_end_and_neither_renewed_nor_orphaned():
    book = borrow_ledger(2)
    granted = book.borrow("laptop", 0, 3 * LEASE_MS)
    assert isinstance(granted, Granted)
    assert (book.in_use, book.borrowed) == (1, 1)
    assert book.renew("laptop", granted.lease.token, 10) is None
    assert book.orphan("laptop", 10, 5000) is None
    book.extend_all(LEASE_MS)
    assert book.expire(3 * LEASE_MS - 1) == []
    assert [lease.client for lease in book.expire(3 * LEASE_MS)] == ["laptop"]
    assert (book.in_use, book.borrowed) == (0, 0)


def test_a_client_id_that_holds_or_waits_for_a_seat_may_not_borrow_and_a_return_frees_at_once():
    book = borrow_ledger(1)
    book.queue_max = 2
    assert isinstance(book.request("desk", 0), Granted)
    refused = book.borrow("desk", 0, LEASE_MS)
    assert isinstance(refused, Denied)
    assert refused.reason == "seat_held"
    assert "client id of its own" in refused.message
    assert isinstance(book.request("waiting", 0, wait=True), Queued)
    refused = book.borrow("waiting", 0, LEASE_MS)
    assert isinstance(refused, Denied)
    assert refused.reason == "seat_held"
    assert book.release("desk") is not None
    book.take_promoted()
    assert book.release("waiting") is not None
    granted = book.borrow("laptop", 0, LEASE_MS)
    assert isinstance(granted, Granted)
    assert book.in_use == 1
    assert book.release("laptop", granted.lease.token, 5) is not None
    assert book.in_use == 0


def test_borrowed_seats_stay_counted_across_a_new_license_and_hold_back_new_grants():
    book = borrow_ledger(4)
    book.queue_max = 2
    lent = [book.borrow(c, 0, 3 * LEASE_MS) for c in ("l1", "l2", "l3")]
    assert all(isinstance(g, Granted) for g in lent)
    assert isinstance(book.request("desk", 0), Granted)
    revoked = book.change_license("licensed", 2, 2)  # fewer seats than are lent
    assert [lease.client for lease in revoked] == ["desk"]
    assert (book.in_use, book.borrowed) == (3, 3)
    assert all(not lease.revoked and lease.generation == 1 for lease in book.leases.values())
    refused = book.request("new", 10)
    assert isinstance(refused, Denied)
    assert refused.reason == "seats_exhausted"
    refused = book.borrow("l4", 10, LEASE_MS)
    assert isinstance(refused, Denied)
    assert refused.reason == "on_site_reserved"
    assert isinstance(book.request("new", 10, wait=True), Queued)
    for g in lent[:2]:
        assert isinstance(g, Granted)
        assert book.release(g.lease.client, g.lease.token, 20) is not None
    # Below the new license's seats at last: the waiter gets one.
    assert [w.client for w, _ in book.take_promoted()] == ["new"]
    assert book.in_use == 2
    # A restart keeps the old generation's borrow counted too.
    again = borrow_ledger(2)
    again.generation = 2
    for lease in book.leases.values():
        again.restore(lease)
    assert (again.in_use, again.borrowed) == (2, 1)
    assert "l3" in [x.client for x in again.expire(3 * LEASE_MS)]
    assert again.borrowed == 0


def test_a_borrow_never_outlasts_the_license():
    book = borrow_ledger(2)
    granted = book.borrow("laptop", 0, 3 * LEASE_MS, until=LEASE_MS)
    assert isinstance(granted, Granted)
    assert granted.lease.expires_at == LEASE_MS
    granted = book.borrow("other", 0, LEASE_MS // 2, until=LEASE_MS)
    assert isinstance(granted, Granted)
    assert granted.lease.expires_at == LEASE_MS // 2


def test_a_seat_asked_for_again_under_another_login_grants_the_waiter_its_cap_held_back():
    """Regression (d4badc7): the re-grant frees room under the old login's cap at once."""
    book = ledger(2)
    book.limits = SeatLimits(per_login=1)
    book.queue_max = 2
    assert isinstance(book.request("a", 0, login="l2"), Granted)
    b = book.request("b", 0, login="l3")
    assert isinstance(b, Granted)
    assert isinstance(book.request("w", 0, login="l1", wait=True), Queued)
    assert isinstance(book.request("a", 0, login="l1"), Granted)  # a moves to l1
    assert book.release("b", b.lease.token, 1) is not None
    assert book.take_promoted() == []  # a seat is free, but l1 is at its cap
    assert isinstance(book.request("a", 1, login="l2"), Granted)  # the seat moves to l2
    assert [w.client for w, _ in book.take_promoted()] == ["w"]
    assert book.queue == {}
