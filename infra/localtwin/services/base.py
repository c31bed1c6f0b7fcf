"""What the throwaway services share: their error and the check that their port is free."""

from __future__ import annotations

import socket

from infra.errors import PipelineError


class ServiceError(PipelineError, RuntimeError):
    """A throwaway service could not be started or did not become ready."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_port(host: str, port: int, what: str) -> None:
    if not port_is_free(host, port):
        raise ServiceError(
            f"{what}: port {host}:{port} is already in use; stop whatever listens there or pick another port"
        )
