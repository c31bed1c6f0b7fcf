"""`inv bench`: how much faster a baked image becomes ready than one set up at boot, measured on the local twin.

One run measures, one VM at a time, every boot timed from QEMU's start:

* ``boot_bare_s``: the floor: the base disk (the source-AMI stand-in) with the image's product-independent boot
  settings written in (``floor.FLOOR_FILES``: SSH host key types, journald), boot -> SSH key login works.
* ``boot_baked_ready_s``: the baked artifact with test-ami's user data, boot -> ``GET /readyz`` 200.
* ``boot_seed_ready_s``: the base disk with user data that does at boot what the original setup did
  (``seed-style.sh``: apt update + upgrade, install Docker, fetch and load the Nextcloud image, build the derived
  image, write its environment, start it) -> ``GET /readyz`` 200.
* ``noop_rebuild_s``: ``inv build-ami`` with unchanged inputs, with proof that no VM (nor Packer) started;
  ``full_bake_s`` from the artifact's own bake record (or a fresh forced bake with ``full_bake=True``).
* ``bake_steps``: seconds per Packer step of the bake that produced the artifact (machine-readable output).
* ``footprint``: used bytes of the artifact's ext4 root filesystem (read offline with dumpe2fs), the artifact
  file's size, and the derived Nextcloud image's size (``docker image inspect`` on a baked boot).

Bare and baked boots take turns; the boot verdict is the median of the paired ratios (each joining baked boot over
the bare boot of its turn) with a bootstrap 95 % interval, read as met, missed or undecided against 1.15x.
Results go to ``build/bench/results.json`` and a table. The benchmark reports what it measures; missing a target
is not a failure, a measurement that could not be taken is recorded as an error.

The rooms: ``stats`` (pure numbers and the paired verdict), ``record`` (the result document), ``table`` (its
table and Markdown), ``procwatch`` (process trees, with psutil), ``boots`` (one boot and the alternating series),
``bootchain`` (what a baked boot waited on), ``floor`` (the floor disk), ``seed`` + ``seed-style.sh`` + ``serve``
(the seed-style boot), ``rebuild`` (no-op rebuild and bake times), ``footprint``, ``run`` (one run end to end).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from infra.errors import PipelineError

Log = Callable[[str], None]


class BenchError(PipelineError, RuntimeError):
    """A measurement could not be taken; the message says why and what to do."""


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
