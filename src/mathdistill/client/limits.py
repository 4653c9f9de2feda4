"""Rate limiting: requests- and tokens-per-minute buckets, and the server's ``Retry-After``."""

from __future__ import annotations

import asyncio
import time
from email.utils import parsedate_to_datetime


class Bucket:
    """A token bucket refilled at ``per_minute / 60`` per second, holding one second's worth (at least one
    unit). A take bigger than the bucket waits for a full bucket and leaves it in debt."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.cap = max(1.0, self.rate)
        self.level = self.cap
        self.t = time.monotonic()
        self.lock = asyncio.Lock()  # first come, first served

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.cap, self.level + (now - self.t) * self.rate)
        self.t = now

    async def take(self, n: float) -> None:
        async with self.lock:
            while True:
                self._refill()
                need = min(n, self.cap)
                if self.level >= need:
                    self.level -= n
                    return
                await asyncio.sleep((need - self.level) / self.rate)

    def give(self, n: float) -> None:
        self._refill()
        self.level = min(self.cap, self.level + n)


def retry_after_s(headers) -> float | None:
    """Seconds from ``retry-after-ms``, ``Retry-After: <seconds>`` or ``Retry-After: <HTTP date>``."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(ra).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None
