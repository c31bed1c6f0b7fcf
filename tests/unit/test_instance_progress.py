"""A twin instance's progress lines count seconds from its own QEMU start, never the host's uptime."""

from __future__ import annotations

from pathlib import Path

from infra.localtwin.instance import Instance


def test_a_line_before_qemu_starts_says_zero_seconds() -> None:
    lines: list[str] = []
    inst = Instance(disk=Path("/nonexistent"), kernel=Path("/nonexistent"), initrd=Path("/nonexistent"),
                    user_data="", name="nc-x", progress=lines.append)
    inst._say("starting QEMU", "tcg")
    assert lines == ["[nc-x    0.0s] starting QEMU: tcg"]
