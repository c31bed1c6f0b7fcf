"""One builder at a time per cache directory (the base disk, the stand-in image).

A bake started in the background by the test session and a test that boots the base disk may both find the cache
empty; without the lock both would build, and the second to finish would replace the entry the first is already
using. With it the second caller waits for the first, then reuses what it built.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def cache_lock(cache: Path, what: str, log: Callable[[str], None]) -> Iterator[None]:
    """Hold ``cache/.lock`` exclusively (an flock: released when the holder exits, however it exits)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{what}: another process is building it; waiting for it ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield
