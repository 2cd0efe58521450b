"""Capped exponential backoff with full jitter, for retries that must not hammer a peer."""

from __future__ import annotations

import random


class Backoff:
    """``next_delay()`` grows ``initial * 2**n`` up to ``cap``, jittered; ``reset()`` on success.

    Full jitter (a uniform draw in [delay/2, delay]) keeps a fleet that failed together from
    retrying together, while guaranteeing progress towards the cap.
    """

    def __init__(
        self, initial: float = 1.0, cap: float = 300.0, *, rng: random.Random | None = None
    ) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError("need 0 < initial <= cap")
        self.initial = initial
        self.cap = cap
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = min(self.cap, self.initial * (2 ** min(self.attempts, 62)))
        self.attempts += 1
        return self._rng.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempts = 0
