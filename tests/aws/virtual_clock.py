"""Time for the doubles: virtual, advanced only when someone watches, so a refresh that takes an hour in AWS runs
in milliseconds here and the same way every time.

Every poll of a double's progress (DescribeInstanceRefreshes, GetConsoleOutput) advances the clock by
``step`` seconds before answering; tests can also ``advance`` it explicitly. Timestamps the doubles report are
a fixed real start plus the virtual seconds elapsed.
"""

from __future__ import annotations

import datetime as dt
import threading


class VirtualClock:
    def __init__(self, step: float = 60.0):
        self.step = step
        self.seconds = 0.0
        self.start = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self.lock = threading.RLock()

    def tick(self) -> float:
        with self.lock:
            self.seconds += self.step
            return self.seconds

    def advance(self, seconds: float) -> float:
        with self.lock:
            self.seconds += seconds
            return self.seconds

    @property
    def now(self) -> float:
        return self.seconds

    def timestamp(self, at: float | None = None) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.seconds if at is None else at)
