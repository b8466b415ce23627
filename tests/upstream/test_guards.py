"""Per-upstream protection (proxy.upstream.guards, SPEC 6.3): the retry budget, backoff, the
circuit breaker and the guard that bundles them.  Pure code: time is a fake clock.

Window semantics, decided from `_Buckets` and asserted below: events are counted in
whole-second buckets (`int(now)`), and the bucket of second `s` is dropped once
`int(now) - window >= s`, i.e. when the clock reaches `s + window`.  An event at t=0.9
therefore still counts at 9.999 and has expired at 10.0: it counts for 9.1 s.  An event
is never counted for longer than `window`, and for at least `window - 1` s.
"""

from __future__ import annotations

import random

import pytest

from proxy.config.model import BreakerPolicy, RetryPolicy, UpstreamConfig
from proxy.upstream.failures import OVERLOADED, REFUSED_BY_BREAKER
from proxy.upstream.guards import (
    BUDGET_FLOOR,
    BUDGET_WINDOW,
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    RetryBudget,
    UpstreamGuard,
    backoff_delay,
)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def spend_all(budget: RetryBudget, limit: int = 10_000) -> int:
    """How many retries the budget grants right now (it stops at the first refusal)."""
    granted = 0
    while granted < limit and budget.try_spend():
        granted += 1
    return granted


def test_constants_match_the_contract() -> None:
    assert (BUDGET_WINDOW, BUDGET_FLOOR) == (10.0, 10)
    assert (CLOSED, HALF_OPEN, OPEN) == (0, 1, 2)  # the circuit_state gauge values


# -- RetryBudget: retries in the last 10 s <= budget x requests in the last 10 s + 10 --------


@pytest.mark.parametrize(
    ("ratio", "requests", "allowed"),
    [
        (0.2, 100, 30),
        (0.2, 0, 10),
        (0.2, 4, 10),  # 0.8 + 10: the allowance is rounded down
        (0.2, 5, 11),
        (0.0, 0, 10),
        (0.0, 100, 10),
        (1.0, 10, 20),
        (0.5, 3, 11),
        (2.0, 7, 24),
        # ratio x requests is a whole number that float arithmetic rounds down
        # (0.29 * 400 + 10 = 125.99999999999999): the boundary retry is still allowed
        (0.29, 400, 126),
        (0.35, 700, 255),
        (0.072, 750, 64),
    ],
)
def test_budget_allows_exactly_ratio_times_requests_plus_ten(
    ratio: float, requests: int, allowed: int
) -> None:
    budget = RetryBudget(ratio, FakeClock(50.0))
    for _ in range(requests):
        budget.record_request()
    assert spend_all(budget) == allowed
    assert budget.try_spend() is False  # a refusal stays a refusal


def test_budget_window_slides_and_the_floor_comes_back() -> None:
    clock = FakeClock()
    budget = RetryBudget(0.2, clock)
    for _ in range(100):
        budget.record_request()
    assert spend_all(budget) == 30  # the 31st is refused
    clock.now = 9.999
    assert budget.try_spend() is False  # everything is still inside the window
    clock.now = 10.0
    # the 100 requests and the 30 retries have expired: only the floor remains
    assert spend_all(budget) == 10
    assert budget.try_spend() is False


def test_refused_retries_are_not_counted() -> None:
    budget = RetryBudget(0.2, FakeClock())
    assert spend_all(budget) == 10
    assert [budget.try_spend() for _ in range(5)] == [False] * 5
    for _ in range(5):
        budget.record_request()  # 0.2 x 5 = exactly one more retry
    assert spend_all(budget) == 1


def test_retries_and_requests_share_the_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(1.0, clock)
    for _ in range(5):
        budget.record_request()
    clock.now = 5.0
    assert spend_all(budget) == 15
    clock.now = 10.0  # the requests (second 0) expire, the retries (second 5) do not
    assert budget.try_spend() is False
    clock.now = 15.0  # now the retries have gone too
    assert spend_all(budget) == 10


# (event at, checked at, still counted): see the module docstring for the bucket rule
BUCKET_BOUNDARIES = [
    (0.0, 9.999, True),
    (0.0, 10.0, False),
    (0.9, 9.999, True),
    (0.9, 10.0, False),  # counted for 9.1 s only: the bucket is second 0
    (0.9, 10.8, False),
    (1.0, 10.999, True),
    (1.0, 11.0, False),
    (5.5, 14.999, True),
    (5.5, 15.0, False),
]


@pytest.mark.parametrize(("event_at", "check_at", "counted"), BUCKET_BOUNDARIES)
def test_budget_retries_expire_at_bucket_boundaries(
    event_at: float, check_at: float, counted: bool
) -> None:
    clock = FakeClock(event_at)
    budget = RetryBudget(0.0, clock)
    assert spend_all(budget) == 10  # ten retries at `event_at` fill the floor
    clock.now = check_at
    assert budget.try_spend() is (not counted)


@pytest.mark.parametrize(("event_at", "check_at", "counted"), BUCKET_BOUNDARIES)
def test_budget_requests_expire_at_bucket_boundaries(
    event_at: float, check_at: float, counted: bool
) -> None:
    clock = FakeClock(event_at)
    budget = RetryBudget(1.0, clock)
    for _ in range(5):
        budget.record_request()
    clock.now = check_at
    assert spend_all(budget) == (15 if counted else 10)


# -- backoff_delay: full jitter, Retry-After first, never beyond max_backoff ----------------

POLICY = RetryPolicy(attempts=10, backoff=0.25, max_backoff=5.0)


class RecordingRng:
    """An rng that returns one end of its range and remembers what it was asked."""

    def __init__(self, upper: bool) -> None:
        self.upper = upper
        self.calls: list[tuple[float, float]] = []

    def __call__(self, low: float, high: float) -> float:
        self.calls.append((low, high))
        return high if self.upper else low


def no_rng(low: float, high: float) -> float:
    raise AssertionError("the rng must not be used when Retry-After decides")


@pytest.mark.parametrize(
    ("retry_number", "cap"),
    [
        (1, 0.25),
        (2, 0.5),
        (3, 1.0),
        (4, 2.0),
        (5, 4.0),
        (6, 5.0),  # 8.0 capped at max_backoff
        (7, 5.0),
        (2000, 5.0),  # 2 ** 1999 does not fit a float: the exponent must be bounded
    ],
)
def test_backoff_cap_doubles_until_max_backoff(retry_number: int, cap: float) -> None:
    upper = RecordingRng(upper=True)
    assert backoff_delay(POLICY, retry_number, None, upper) == cap
    assert upper.calls == [(0.0, cap)]
    lower = RecordingRng(upper=False)
    assert backoff_delay(POLICY, retry_number, None, lower) == 0.0
    assert lower.calls == [(0.0, cap)]


@pytest.mark.parametrize(
    ("policy", "retry_number", "cap"),
    [
        (RetryPolicy(backoff=3.0, max_backoff=2.0), 1, 2.0),  # backoff above the cap
        (RetryPolicy(backoff=0.0, max_backoff=2.0), 5, 0.0),
        (RetryPolicy(backoff=0.5, max_backoff=0.0), 1, 0.0),
        (RetryPolicy(), 1, 0.1),  # the defaults
        (RetryPolicy(), 5, 1.6),
        (RetryPolicy(), 6, 2.0),
    ],
)
def test_backoff_edge_policies(policy: RetryPolicy, retry_number: int, cap: float) -> None:
    assert backoff_delay(policy, retry_number, None, RecordingRng(upper=True)) == cap


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (0.0, 0.0),
        (0.5, 0.5),
        (1.5, 1.5),
        (5.0, 5.0),  # equal to max_backoff: honoured
        (5.001, None),  # longer than we may wait: never retry sooner than asked
        (60.0, None),
    ],
)
@pytest.mark.parametrize("retry_number", [1, 3, 9])
def test_backoff_honours_retry_after(
    retry_after: float, expected: float | None, retry_number: int
) -> None:
    assert backoff_delay(POLICY, retry_number, retry_after, no_rng) == expected


def test_backoff_full_jitter_with_a_seeded_rng() -> None:
    rng = random.Random(1234).uniform
    for retry_number in range(1, 9):
        cap = min(POLICY.max_backoff, POLICY.backoff * 2 ** (retry_number - 1))
        delays: list[float] = []
        for _ in range(2000):
            delay = backoff_delay(POLICY, retry_number, None, rng)
            assert delay is not None
            delays.append(delay)
        assert all(0.0 <= d <= cap for d in delays)
        # full jitter spreads over the whole range, down to (almost) zero
        assert min(delays) < 0.01 * cap
        assert max(delays) > 0.99 * cap
        assert 0.45 * cap < sum(delays) / len(delays) < 0.55 * cap


def test_backoff_default_rng_stays_in_range() -> None:
    for retry_number in range(1, 9):
        cap = min(POLICY.max_backoff, POLICY.backoff * 2 ** (retry_number - 1))
        for _ in range(500):
            delay = backoff_delay(POLICY, retry_number, None)
            assert delay is not None
            assert 0.0 <= delay <= cap


# -- CircuitBreaker --------------------------------------------------------------------------

BREAKER = BreakerPolicy(failure_ratio=0.5, min_requests=4, window=10.0, open_for=30.0)
T0 = 1000.0


def make_breaker(
    policy: BreakerPolicy = BREAKER, now: float = T0
) -> tuple[CircuitBreaker, FakeClock, list[int]]:
    clock = FakeClock(now)
    states: list[int] = []
    return CircuitBreaker(policy, clock, states.append), clock, states


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(BREAKER.min_requests):
        breaker.record(failure=True, probe=False)
    assert breaker.state == OPEN


def first_open(breaker: CircuitBreaker, outcomes: str) -> int | None:
    """Feed `outcomes` (F = failure, S = success); the 1-based index that opened it."""
    for index, outcome in enumerate(outcomes, 1):
        assert breaker.admit() == (True, False, 0)
        breaker.record(failure=outcome == "F", probe=False)
        if breaker.state == OPEN:
            return index
    return None


@pytest.mark.parametrize(
    ("policy", "outcomes", "opens_at"),
    [
        (BREAKER, "FFF", None),  # 100% failures, but below min_requests
        (BREAKER, "FFFF", 4),
        (BREAKER, "SSFF", 4),  # 2/4 = 0.5 >= 0.5
        (BREAKER, "FSFS", 4),
        (BREAKER, "SSSF", None),  # 1/4
        (BREAKER, "SSSFF", None),  # 2/5
        (BREAKER, "SSSFFF", 6),  # 3/6
        (BREAKER, "SSSSSSSSFFFFFFFF", 16),
        pytest.param(BreakerPolicy(min_requests=20), "F" * 19, None, id="19F-of-min-20"),
        pytest.param(BreakerPolicy(min_requests=20), "F" * 25, 20, id="25F-of-min-20"),
        (BreakerPolicy(failure_ratio=1.0, min_requests=4), "FFFSFFFF", None),  # 7/8
        (BreakerPolicy(failure_ratio=1.0, min_requests=4), "FFFF", 4),
        # 7/100 is exactly the ratio, although 0.07 * 100 rounds to 7.000000000000001
        pytest.param(
            BreakerPolicy(failure_ratio=0.07, min_requests=100), "S" * 93 + "F" * 7, 100, id="7%"
        ),
        pytest.param(
            BreakerPolicy(failure_ratio=0.07, min_requests=100), "S" * 94 + "F" * 6, None, id="6%"
        ),
    ],
)
def test_breaker_opens_on_ratio_with_enough_requests(
    policy: BreakerPolicy, outcomes: str, opens_at: int | None
) -> None:
    breaker, _, states = make_breaker(policy)
    assert first_open(breaker, outcomes) == opens_at
    assert states == ([CLOSED] if opens_at is None else [CLOSED, OPEN])


@pytest.mark.parametrize(
    ("elapsed", "retry_after"),
    [
        (0.0, 30),
        (0.5, 30),
        (0.7, 30),  # 29.3 s left: rounded up, never down
        (1.0, 29),
        (17.6, 13),
        (18.5, 12),
        (29.0, 1),
        (29.999, 1),
    ],
)
def test_open_breaker_refuses_with_seconds_until_half_open(
    elapsed: float, retry_after: int
) -> None:
    breaker, clock, _ = make_breaker()
    trip(breaker)
    clock.now = T0 + elapsed
    assert breaker.admit() == (False, False, retry_after)
    assert breaker.state == OPEN


def test_half_open_admits_exactly_one_probe() -> None:
    breaker, clock, states = make_breaker()
    trip(breaker)
    clock.now = T0 + 30.0
    assert breaker.admit() == (True, True, 0)
    assert breaker.state == HALF_OPEN
    assert [breaker.admit() for _ in range(3)] == [(False, False, 1)] * 3
    clock.advance(100.0)  # a slow probe is not replaced by time alone
    assert breaker.admit() == (False, False, 1)
    assert states == [CLOSED, OPEN, HALF_OPEN]


def test_probe_success_closes_and_starts_counting_afresh() -> None:
    breaker, clock, states = make_breaker()
    trip(breaker)
    clock.now = T0 + 30.0
    assert breaker.admit() == (True, True, 0)
    breaker.record(failure=False, probe=True)
    assert breaker.state == CLOSED
    assert states == [CLOSED, OPEN, HALF_OPEN, CLOSED]
    assert breaker.admit() == (True, False, 0)
    # neither the old failures nor the probe count: it takes min_requests new failures
    assert first_open(breaker, "FFFF") == 4


def test_probe_failure_reopens_for_a_full_open_for() -> None:
    breaker, clock, states = make_breaker()
    trip(breaker)
    clock.now = T0 + 45.0  # nobody asked at 30 s: half-open starts on the next admit
    assert breaker.admit() == (True, True, 0)
    clock.now = T0 + 50.0
    breaker.record(failure=True, probe=True)  # the probe failed at 50 s
    assert breaker.state == OPEN
    assert breaker.admit() == (False, False, 30)
    clock.now = T0 + 79.999
    assert breaker.admit() == (False, False, 1)
    clock.now = T0 + 80.0
    assert breaker.admit() == (True, True, 0)
    assert states == [CLOSED, OPEN, HALF_OPEN, OPEN, HALF_OPEN]


def test_release_probe_lets_another_probe_through() -> None:
    breaker, clock, states = make_breaker()
    trip(breaker)
    clock.now = T0 + 30.0
    assert breaker.admit() == (True, True, 0)
    assert breaker.admit() == (False, False, 1)
    breaker.release_probe()  # the client left before the verdict
    assert breaker.state == HALF_OPEN
    assert breaker.admit() == (True, True, 0)
    assert breaker.admit() == (False, False, 1)
    assert states == [CLOSED, OPEN, HALF_OPEN]


@pytest.mark.parametrize(
    ("fourth_at", "opens"),
    [
        (T0 + 5.0, True),
        (T0 + 9.999, True),
        (T0 + 10.0, False),  # the three failures of second T0 have left the window
        (T0 + 25.0, False),
    ],
)
def test_breaker_failures_older_than_window_do_not_count(fourth_at: float, opens: bool) -> None:
    breaker, clock, _ = make_breaker(now=T0 + 0.9)
    assert first_open(breaker, "FFF") is None
    clock.now = fourth_at
    breaker.record(failure=True, probe=False)
    assert breaker.state == (OPEN if opens else CLOSED)


def test_breaker_window_slides_failure_by_failure() -> None:
    breaker, clock, _ = make_breaker()
    for second in range(3):  # failures at T0, T0+1, T0+2
        clock.now = T0 + second
        breaker.record(failure=True, probe=False)
    clock.now = T0 + 11.0  # T0 and T0+1 have expired; only T0+2 is left
    assert first_open(breaker, "FFFF") == 3  # 1 + 3 = min_requests


def test_on_state_sees_every_transition_in_order() -> None:
    breaker, clock, states = make_breaker()
    assert states == [CLOSED]  # the initial state is published
    trip(breaker)
    assert breaker.admit() == (False, False, 30)  # refusals publish nothing
    clock.now = T0 + 30.0
    assert breaker.admit() == (True, True, 0)
    breaker.record(failure=True, probe=True)
    clock.now = T0 + 60.0
    assert breaker.admit() == (True, True, 0)
    assert breaker.admit() == (False, False, 1)
    breaker.record(failure=False, probe=True)
    assert states == [CLOSED, OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]


def test_late_answers_while_open_change_nothing() -> None:
    breaker, clock, states = make_breaker()
    trip(breaker)
    clock.now = T0 + 10.0
    for _ in range(2 * BREAKER.min_requests):  # answers to requests admitted before it opened
        breaker.record(failure=True, probe=False)
    assert breaker.state == OPEN
    assert breaker.admit() == (False, False, 20)  # not re-opened: the clock did not restart
    assert states == [CLOSED, OPEN]
    clock.now = T0 + 30.0
    assert breaker.admit() == (True, True, 0)
    breaker.record(failure=True, probe=False)  # late, while half-open: ignored as well
    assert breaker.state == HALF_OPEN
    assert breaker.admit() == (False, False, 1)  # the probe is still out
    breaker.record(failure=False, probe=True)
    assert first_open(breaker, "FFFF") == 4  # the late failures were never counted
    assert states == [CLOSED, OPEN, HALF_OPEN, CLOSED, OPEN]


# -- UpstreamGuard ---------------------------------------------------------------------------


def upstream(
    max_concurrency: int = 256,
    retry: RetryPolicy | None = None,
    circuit_breaker: BreakerPolicy | None = None,
) -> UpstreamConfig:
    return UpstreamConfig(
        name="app",
        url="http://127.0.0.1:3000",
        max_concurrency=max_concurrency,
        retry=retry or RetryPolicy(),
        circuit_breaker=circuit_breaker,
    )


def test_guard_without_breaker() -> None:
    config = upstream(retry=RetryPolicy(budget=0.5))
    guard = UpstreamGuard.build(config, FakeClock())
    assert guard.breaker is None
    assert guard.config is config
    assert guard.budget.ratio == 0.5
    assert guard.in_flight == 0


def test_guard_with_breaker_shares_the_clock_and_callback() -> None:
    clock = FakeClock(T0)
    states: list[int] = []
    guard = UpstreamGuard.build(upstream(circuit_breaker=BREAKER), clock, states.append)
    assert isinstance(guard.breaker, CircuitBreaker)
    assert guard.breaker.policy is BREAKER
    trip(guard.breaker)
    clock.now = T0 + 18.5
    assert guard.breaker.admit() == (False, False, 12)
    assert states == [CLOSED, OPEN]
    # the budget runs on the same clock (the default ratio, 0.2, with no requests)
    assert spend_all(guard.budget) == 10
    clock.now = T0 + 28.5
    assert spend_all(guard.budget) == 10


@pytest.mark.parametrize(
    ("max_concurrency", "in_flight", "full"),
    [(2, 0, False), (2, 1, False), (2, 2, True), (2, 3, True), (1, 0, False), (1, 1, True)],
)
def test_guard_full_at_max_concurrency(max_concurrency: int, in_flight: int, full: bool) -> None:
    guard = UpstreamGuard.build(upstream(max_concurrency=max_concurrency), FakeClock())
    guard.in_flight = in_flight
    assert guard.full() is full


def test_guards_are_independent() -> None:
    clock = FakeClock()
    config = upstream(circuit_breaker=BREAKER)
    first, second = UpstreamGuard.build(config, clock), UpstreamGuard.build(config, clock)
    assert first.breaker is not None and second.breaker is not None
    trip(first.breaker)
    assert second.breaker.state == CLOSED
    assert spend_all(first.budget) == 10
    assert spend_all(second.budget) == 10


# -- Admission: one attempt's hold on its upstream --------------------------------------------


def test_an_admitted_attempt_is_in_flight_for_its_block_only() -> None:
    guard = UpstreamGuard.build(upstream(max_concurrency=1), FakeClock())
    admission = guard.admit()
    assert admission.refusal is None and admission.retry_after == 0
    with admission:
        assert guard.in_flight == 1
        refused = guard.admit()  # the limit is reached while the first is in flight
        assert refused.refusal is OVERLOADED and refused.retry_after == 1
    assert guard.in_flight == 0
    assert guard.admit().refusal is None


def test_an_open_breaker_refuses_with_the_seconds_until_half_open() -> None:
    clock = FakeClock(T0)
    guard = UpstreamGuard.build(upstream(circuit_breaker=BREAKER), clock)
    assert guard.breaker is not None
    trip(guard.breaker)
    clock.now = T0 + 18.5
    refused = guard.admit()
    assert refused.refusal is REFUSED_BY_BREAKER and refused.retry_after == 12
    assert guard.in_flight == 0


@pytest.mark.parametrize("failed", [False, True])
def test_a_recorded_probe_decides_the_breaker(failed: bool) -> None:
    clock = FakeClock(T0)
    guard = UpstreamGuard.build(upstream(circuit_breaker=BREAKER), clock)
    breaker = guard.breaker
    assert breaker is not None
    trip(breaker)
    clock.now = T0 + BREAKER.open_for
    with guard.admit() as probe:
        assert breaker.state == HALF_OPEN
        assert guard.admit().refusal is REFUSED_BY_BREAKER  # one probe at a time
        probe.record(failed=failed)
    assert breaker.state == (OPEN if failed else CLOSED)


def test_a_probe_that_ends_without_a_record_lets_another_probe() -> None:
    clock = FakeClock(T0)
    guard = UpstreamGuard.build(upstream(circuit_breaker=BREAKER), clock)
    assert guard.breaker is not None
    trip(guard.breaker)
    clock.now = T0 + BREAKER.open_for
    with pytest.raises(ConnectionError), guard.admit():
        raise ConnectionError("the client left")
    assert guard.in_flight == 0
    assert guard.admit().refusal is None  # the next request is the probe


def test_a_probe_refused_by_the_concurrency_limit_is_released() -> None:
    clock = FakeClock(T0)
    guard = UpstreamGuard.build(upstream(max_concurrency=1, circuit_breaker=BREAKER), clock)
    assert guard.breaker is not None
    trip(guard.breaker)
    clock.now = T0 + BREAKER.open_for
    guard.in_flight = 1  # e.g. a WebSocket handshake still in flight
    assert guard.admit().refusal is OVERLOADED
    guard.in_flight = 0
    assert guard.admit().refusal is None  # the probe was not lost with the refusal
