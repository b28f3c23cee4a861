"""A routed call's accounting: its budget reserved before the call (429 ``budget_exceeded``
when a bound would be passed), then settled to the real usage and cost in the background."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from slipway.api.auth import Principal
from slipway.api.errors import ApiError
from slipway.routing.models import ModelSpec
from slipway.routing.usage import Refusal, Reservation, UsageRecorder, UsageStore, unreserved


def budgeted(caller: Principal) -> bool:
    """Whether ``caller`` has a budget to reserve against."""
    return caller.budget is not None and caller.budget.bounded()


def over_budget(refusal: Refusal, asked: float, now: datetime) -> ApiError:
    """429 ``budget_exceeded`` naming the bound and when it resets (``Retry-After`` to then)."""
    return ApiError(
        429,
        refusal.message(asked),
        type="insufficient_quota",
        code="budget_exceeded",
        retry_after=refusal.retry_after(now),
    )


@dataclass(frozen=True)
class Meter:
    """One call's reservation, and where its real usage goes."""

    reservation: Reservation
    recorder: UsageRecorder

    def settle(self, spec: ModelSpec, tokens_in: int, tokens_out: int) -> None:
        """Record what ``spec`` used (cost at its prices), off the event loop."""
        self.recorder.record(
            self.reservation, spec.id, tokens_in, tokens_out, spec.cost(tokens_in, tokens_out)
        )

    def release(self) -> None:
        """Give the reservation back (no model answered; no usage)."""
        if self.reservation.tokens or self.reservation.cost:
            self.recorder.record(self.reservation, "", 0, 0, 0.0)


async def reserve(
    store: UsageStore,
    recorder: UsageRecorder,
    caller: Principal,
    spec: ModelSpec,
    prompt_tokens: int,
    new_tokens: int,
) -> Meter:
    """Reserve ``prompt_tokens + new_tokens`` (and their cost at ``spec``'s prices) of the
    caller's budget in one atomic check-and-add, in a worker thread; nothing to reserve when
    the caller has no budget."""
    now = datetime.now(UTC)
    if not budgeted(caller):
        return Meter(unreserved(caller.account, now), recorder)
    assert caller.budget is not None
    tokens, cost = prompt_tokens + new_tokens, spec.cost(prompt_tokens, new_tokens)
    got = await asyncio.to_thread(store.reserve, caller.account, caller.budget, tokens, cost, now)
    if isinstance(got, Refusal):
        raise over_budget(got, tokens if got.measure == "tokens" else cost, now)
    return Meter(got, recorder)
