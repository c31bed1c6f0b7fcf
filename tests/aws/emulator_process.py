"""Start moto's server (or a program wrapping it) on loopback for the tests, and talk to its control API."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest


def serve_moto(
    tmp_path_factory: pytest.TempPathFactory, command: list[str], extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run ``command -H 127.0.0.1 -p PORT`` (moto's server, or a program that wraps it) until the session ends.

    ``extra_env`` adds variables for the server, e.g. ``MOTO_AMIS_PATH``."""
    from infra.localtwin.instance import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    recording = tmp_path_factory.mktemp("moto") / "recording.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(MOTO_ENABLE_RECORDING="True", MOTO_RECORDER_FILEPATH=str(recording), NCIMAGE_CFN_EMULATOR_URL=url)
    env.update(extra_env or {})
    log = (recording.parent / "server.log").open("wb")
    proc = subprocess.Popen(
        [*command, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            moto_api(url, "/moto-api/data.json")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                output = (recording.parent / "server.log").read_text()
                raise RuntimeError(f"moto server did not start: {output}") from None
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def moto_api(url: str, path: str, data: bytes | None = None) -> bytes:
    req = urllib.request.Request(url + path, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback emulator
        return resp.read()
