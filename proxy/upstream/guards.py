"""Per-upstream protection: the concurrency limit, the retry budget, backoff and the
circuit breaker (SPEC 6.3).  No I/O: time comes from an injected clock, so every
rule here is tested with a fake one.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from proxy.config.model import BreakerPolicy, RetryPolicy, UpstreamConfig
from proxy.upstream.failures import OVERLOADED, REFUSED_BY_BREAKER, Failure

Clock = Callable[[], float]

CLOSED, HALF_OPEN, OPEN = 0, 1, 2  # the circuit_state gauge values
BUDGET_WINDOW = 10.0  # seconds: "retries in the last 10 s"
BUDGET_FLOOR = 10  # "... + 10": a quiet upstream may still be retried a little
REPLAY_LIMIT = 64 << 10  # request bodies up to this size are buffered to be replayed


class _Buckets:
    """Event counts in one-second buckets over a sliding window."""

    __slots__ = ("_clock", "_counts", "_window")

    def __init__(self, window: float, clock: Clock) -> None:
        self._window = window
        self._clock = clock
        self._counts: deque[list[int]] = deque()  # [second, a, b]

    def add(self, a: int = 0, b: int = 0) -> None:
        now = int(self._clock())
        self._expire(now)
        if self._counts and self._counts[-1][0] == now:
            self._counts[-1][1] += a
            self._counts[-1][2] += b
        else:
            self._counts.append([now, a, b])

    def totals(self) -> tuple[int, int]:
        self._expire(int(self._clock()))
        return sum(c[1] for c in self._counts), sum(c[2] for c in self._counts)

    def clear(self) -> None:
        self._counts.clear()

    def _expire(self, now: int) -> None:
        horizon = now - self._window
        while self._counts and self._counts[0][0] <= horizon:
            self._counts.popleft()


class RetryBudget:
    """Retries in the last 10 s may not exceed `ratio` x requests in the last 10 s + 10.

    This is what keeps retries from multiplying an outage (a retry storm)."""

    def __init__(self, ratio: float, clock: Clock = time.monotonic) -> None:
        self.ratio = ratio
        self._events = _Buckets(BUDGET_WINDOW, clock)  # a = requests, b = retries

    def record_request(self) -> None:
        self._events.add(a=1)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        requests, retries = self._events.totals()
        # Compare a quotient, not `ratio * requests + 10`: 0.29 * 400 + 10 rounds to
        # 125.99999999999999, which would refuse the 126th retry the contract allows.
        beyond_floor = retries + 1 - BUDGET_FLOOR
        if beyond_floor > 0 and (requests == 0 or beyond_floor / requests > self.ratio):
            return False
        self._events.add(b=1)
        return True


def backoff_delay(
    policy: RetryPolicy,
    retry_number: int,
    retry_after: float | None,
    rng: Callable[[float, float], float] = random.uniform,
) -> float | None:
    """Seconds to wait before retry `retry_number` (1 for the first), or None when the
    upstream asked for longer than `max_backoff` (we never retry sooner than asked).

    Full jitter (uniform between 0 and the exponential cap) spreads retries out so
    that clients which failed together do not come back together."""
    if retry_after is not None:
        return retry_after if retry_after <= policy.max_backoff else None
    # The exponent is bounded: 2 ** 1024 no longer converts to a float (OverflowError),
    # and a config may allow that many attempts; the cap is reached long before anyway.
    cap = min(policy.max_backoff, policy.backoff * 2.0 ** min(retry_number - 1, 1000))
    return rng(0.0, cap)


class CircuitBreaker:
    """Opens when failures/requests >= `failure_ratio` over a rolling `window` (with at
    least `min_requests`); stays open `open_for`; then lets one probe through."""

    def __init__(
        self,
        policy: BreakerPolicy,
        clock: Clock = time.monotonic,
        on_state: Callable[[int], None] | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._on_state = on_state or (lambda state: None)
        self._events = _Buckets(policy.window, clock)  # a = requests, b = failures
        self.state = CLOSED
        self._opened_at = 0.0
        self._probing = False
        self._on_state(CLOSED)

    def admit(self) -> tuple[bool, bool, int]:
        """(admitted, is_probe, retry_after seconds when refused)."""
        if self.state == OPEN:
            remaining = self._opened_at + self.policy.open_for - self._clock()
            if remaining > 0:
                return False, False, max(1, math.ceil(remaining))
            self._set(HALF_OPEN)
        if self.state == HALF_OPEN:
            if self._probing:
                return False, False, 1
            self._probing = True
            return True, True, 0
        return True, False, 0

    def record(self, failure: bool, probe: bool) -> None:
        """The result of an admitted request."""
        if probe:
            self._probing = False
            if failure:
                self._open()
            else:
                self._events.clear()
                self._set(CLOSED)
            return
        if self.state != CLOSED:
            return  # a late answer from before the circuit opened
        self._events.add(a=1, b=1 if failure else 0)
        requests, failures = self._events.totals()
        # A quotient, as the contract says: `ratio * requests` rounds (0.07 * 100 is 7.000...1,
        # so 7 failures in 100 would not trip a 0.07 breaker).
        if (
            requests >= self.policy.min_requests
            and failures / requests >= self.policy.failure_ratio
        ):
            self._open()

    def release_probe(self) -> None:
        """The probe ended without a verdict (the client left): let another one try."""
        self._probing = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._events.clear()
        self._set(OPEN)

    def _set(self, state: int) -> None:
        if state != self.state or state == OPEN:
            self.state = state
            self._on_state(state)


@dataclass(slots=True)
class UpstreamGuard:
    """The live protection state of one upstream; it survives config reloads as long as
    the upstream's settings do not change."""

    config: UpstreamConfig
    budget: RetryBudget
    breaker: CircuitBreaker | None
    in_flight: int = 0

    @classmethod
    def build(
        cls,
        config: UpstreamConfig,
        clock: Clock = time.monotonic,
        on_state: Callable[[int], None] | None = None,
    ) -> UpstreamGuard:
        breaker = None
        if config.circuit_breaker is not None:
            breaker = CircuitBreaker(config.circuit_breaker, clock, on_state)
        return cls(config, RetryBudget(config.retry.budget, clock), breaker)

    def full(self) -> bool:
        return self.in_flight >= self.config.max_concurrency

    def admit(self) -> Admission:
        """Ask the breaker, then the concurrency limit, to let one attempt through."""
        probe = False
        breaker = self.breaker
        if breaker is not None:
            admitted, probe, wait = breaker.admit()
            if not admitted:
                return Admission(self, REFUSED_BY_BREAKER, wait)
        if self.full():
            if probe and breaker is not None:
                breaker.release_probe()
            return Admission(self, OVERLOADED, 1)
        return Admission(self, None, 0, probe)


class Admission:
    """One attempt's hold on its upstream (SPEC 6.3), used as `with admission:` when it
    was admitted (`refusal` None): counted in flight until the block ends; `record(failed)`
    tells the breaker how the attempt went; a half-open probe that ends without a record
    (the client left) is released, so another request can probe.

    Refused: `refusal` is the failure-table row (breaker open, concurrency limit) and
    `retry_after` the seconds to announce."""

    __slots__ = ("_probe", "guard", "refusal", "retry_after")

    def __init__(
        self, guard: UpstreamGuard, refusal: Failure | None, retry_after: int, probe: bool = False
    ) -> None:
        self.guard = guard
        self.refusal = refusal
        self.retry_after = retry_after
        self._probe = probe

    def __enter__(self) -> Admission:
        self.guard.in_flight += 1
        return self

    def record(self, failed: bool) -> None:
        """The attempt's result for the breaker: `failed` is a true 5xx (SPEC 6.3)."""
        breaker = self.guard.breaker
        if breaker is not None:
            breaker.record(failed, self._probe)
            self._probe = False

    def __exit__(self, *exc_info: object) -> None:
        guard = self.guard
        guard.in_flight -= 1
        if self._probe and guard.breaker is not None:
            guard.breaker.release_probe()
            self._probe = False
