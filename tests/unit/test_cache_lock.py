"""Two processes that find the base disk cache empty at once build it once: the second waits, then reuses it.

(The test session starts the bake in the background while a test may boot the base disk: both call
ensure_base_disk.) Threads stand in for the processes: an flock is held per open file, so two threads that each open
the lock file exclude each other exactly as two processes do.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

from infra.localtwin import base_disk


def test_two_callers_on_an_empty_cache_build_the_base_disk_once(tmp_path: Path, monkeypatch) -> None:
    built: list[str] = []
    done = tmp_path / "cache" / "entry"

    disk = SimpleNamespace(disk=done / "disk.raw")

    def cached(cache: Path):
        return disk if done.exists() else None

    def build(cache: Path, log):
        built.append(threading.current_thread().name)
        time.sleep(0.5)  # long enough that the other caller finds the cache still empty
        done.mkdir()
        return disk

    monkeypatch.setattr(base_disk, "cached_base_disk", cached)
    monkeypatch.setattr(base_disk, "build_base_disk", build)
    messages: list[str] = []
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(base_disk.ensure_base_disk(tmp_path / "cache",
                                                                                         messages.append)),
                                name=f"caller-{n}") for n in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=10)
    assert len(built) == 1, f"built {len(built)} times: {built}"
    assert results == [disk, disk]
    assert any("another process is building it" in m for m in messages), messages
