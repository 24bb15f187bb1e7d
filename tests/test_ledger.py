"""The seat ledger: unit tests and a stateful property test of its one invariant."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from floatkeyd.ledger import Denied, Granted, Lease, SeatLedger, SeatLimits

LEASE_MS = 60_000
LIMITS = SeatLimits(per_login=2)


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
        self.book = SeatLedger("licensed", 3, 1, LEASE_MS, limits=LIMITS)
        self.now = 0
        self.tokens: dict[str, str] = {}

    clients = st.sampled_from([f"c{i}" for i in range(8)])

    @rule(client=clients, login=st.sampled_from(["l1", "l2"]))
    def request(self, client: str, login: str) -> None:
        result = self.book.request(client, self.now, login=login)
        if isinstance(result, Granted):
            self.tokens[client] = result.lease.token

    @rule(client=clients)
    def renew(self, client: str) -> None:
        self.book.renew(client, self.tokens.get(client, "none"), self.now)

    @rule(client=clients, with_token=st.booleans())
    def release(self, client: str, with_token: bool) -> None:
        self.book.release(client, self.tokens.get(client) if with_token else None)

    @rule(client=clients)
    def will(self, client: str) -> None:
        self.book.orphan(client, self.now, 5000)

    @rule(ms=st.integers(0, 2 * LEASE_MS))
    def time_passes(self, ms: int) -> None:
        self.now += ms
        self.book.expire(self.now)

    @rule(seats=st.integers(1, 5), mode=st.sampled_from(["licensed", "expired", "unlicensed"]))
    def new_license(self, seats: int, mode: str) -> None:
        self.book.change_license(mode, seats, self.book.generation + 1)  # type: ignore[arg-type]

    @rule()
    def restart(self) -> None:
        leases = [*self.book.leases.values(), *self.book.revoked.values()]
        book = SeatLedger(
            self.book.mode, self.book.seats, self.book.generation, LEASE_MS, limits=LIMITS
        )
        for lease in leases:
            book.restore(Lease(**{f: getattr(lease, f) for f in Lease.__dataclass_fields__}))
        self.book = book

    @invariant()
    def never_more_licensed_leases_than_seats(self) -> None:
        licensed = [lease for lease in self.book.leases.values() if lease.licensed]
        assert len(licensed) == self.book.in_use
        if self.book.mode == "licensed":
            assert self.book.in_use <= self.book.seats

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
        assert all(lease.generation == self.book.generation for lease in self.book.leases.values())
        assert all(lease.revoked for lease in self.book.revoked.values())
        assert not set(self.book.leases) & set(self.book.revoked)

    @invariant()
    def nothing_outlives_its_lease(self) -> None:
        every = [*self.book.leases.values(), *self.book.revoked.values()]
        assert all(lease.expires_at > self.now for lease in every)


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
