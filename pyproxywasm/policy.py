"""Failure policies (Envoy 1.33's failure_policy) and the reload backoff.

When a plugin's VM fails (a trap, a deadline, an interrupted call):
- FAIL_CLOSED (the default): its streams get a 503 local reply with details
  `wasm_fail_stream` (grpc-status 14 only when the request is gRPC), now and until the
  VM is replaced.
- FAIL_OPEN: its streams pass as if the filter were absent.
- FAIL_RELOAD: the next stream on that thread gets a new VM from the compiled module,
  with exponential backoff per thread (while backing off, streams fail closed), so a
  query of death cannot make a thread reload in a hot loop. Beyond Envoy: a reload budget
  per thread and VM (once spent, the VM stays failed and streams fail closed), and a
  counter plus one log line per failure with the trap message.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from .errors import ConfigError


class FailurePolicy(enum.Enum):
    FAIL_CLOSED = "FAIL_CLOSED"
    FAIL_OPEN = "FAIL_OPEN"
    FAIL_RELOAD = "FAIL_RELOAD"


class FailureOutcome(enum.Enum):
    """What a stream saw of its plugin's failure (HttpStream.failure_outcome)."""

    FAILED_CLOSED = "failed_closed"  # a 503 wasm_fail_stream local reply
    FAILED_OPEN = "failed_open"      # passed without the filter
    RELOADED = "reloaded"            # served by a VM reloaded after a failure


@dataclass(frozen=True)
class ReloadPolicy:
    """FAIL_RELOAD's backoff: base * 2**(n-1) after the n-th failure in a row, capped at
    max_backoff. Failures are "in a row" while each reloaded VM fails on the first stream
    it is given (a query of death); one that served another stream first resets n.
    budget: reloads allowed per thread and VM (0: none, None: no limit)."""

    base_backoff: float = 1.0
    max_backoff: float = 30.0
    budget: int | None = 100

    def __post_init__(self) -> None:
        if self.base_backoff < 0 or self.max_backoff < self.base_backoff:
            raise ConfigError("ReloadPolicy needs 0 <= base_backoff <= max_backoff")
        if self.budget is not None and self.budget < 0:
            raise ConfigError("ReloadPolicy.budget must be >= 0 or None")


class ReloadState:
    """One thread's reload bookkeeping for one VM key."""

    def __init__(self, policy: ReloadPolicy) -> None:
        self.policy = policy
        self.failures = 0          # in a row, for the backoff
        self.reloads = 0           # in total, for the budget
        self.next_reload_at = 0.0  # monotonic
        self.started_at = time.monotonic()
        self.backoffs: list[float] = []  # every backoff chosen, in order (for tests, logs)

    def record_failure(self, streams: int = 1) -> float:
        """Called once per failed VM, with how many streams it was given: returns the
        backoff before the next reload."""
        now = time.monotonic()
        if streams > 1:
            self.failures = 0  # the VM served before it failed: not a query of death
        self.failures += 1
        backoff = float(min(self.policy.base_backoff * 2 ** (self.failures - 1), self.policy.max_backoff))
        self.next_reload_at = now + backoff
        self.backoffs.append(backoff)
        return backoff

    def may_reload(self) -> bool:
        budget = self.policy.budget
        if budget is not None and self.reloads >= budget:
            return False
        return time.monotonic() >= self.next_reload_at

    def reloaded(self) -> None:
        self.reloads += 1
        self.started_at = time.monotonic()
