"""A clock for the tests: monotonic time that moves only when told to (or when a client sleeps)."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock that only moves when told to (or when a client "sleeps")."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
