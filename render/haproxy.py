"""HAProxy's configuration for the local twin's load balancer, from the stack's target group.

The drills (infra/drill/) put HAProxy on loopback where the Application Load Balancer and its target group stand on
AWS. Everything that decides when a target gets traffic comes from the TargetGroup resource in
infra/stack/nextcloud.yaml, read by the caller and passed in as its ``Properties``: the health check (path,
interval, timeout, thresholds, matcher), the algorithm, stickiness and the deregistration delay. What HAProxy does
not express the way a target group does is said next to the setting in the template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).with_name("templates")
# The target group's algorithms and HAProxy's nearest equivalent.
ALGORITHMS = {"least_outstanding_requests": "leastconn", "round_robin": "roundrobin"}


class TargetGroupError(ValueError):
    """The TargetGroup in the stack template lacks a setting the balancer needs; the message names it."""


@dataclass(frozen=True)
class TargetGroupHealth:
    """What the target group decides with, in the stack template's own units (seconds, counts)."""

    path: str
    interval_s: int
    timeout_s: int
    healthy_threshold: int
    unhealthy_threshold: int
    matcher: str
    deregistration_delay_s: int
    algorithm: str
    sticky: bool
    sticky_duration_s: int

    @classmethod
    def from_properties(cls, props: dict[str, Any]) -> TargetGroupHealth:
        """Read a TargetGroup's ``Properties`` (the template's plain-data form)."""

        def need(key: str) -> Any:
            if key not in props:
                raise TargetGroupError(f"the TargetGroup has no {key}: add it to infra/stack/nextcloud.yaml")
            return props[key]

        attrs = {a["Key"]: str(a["Value"]) for a in props.get("TargetGroupAttributes", []) if "Key" in a}
        if need("HealthCheckProtocol") != "HTTP":
            raise TargetGroupError("the TargetGroup's HealthCheckProtocol must be HTTP for the twin's balancer")
        algorithm = attrs.get("load_balancing.algorithm.type", "round_robin")
        if algorithm not in ALGORITHMS:
            raise TargetGroupError(f"load_balancing.algorithm.type {algorithm!r} has no HAProxy equivalent here: "
                                   f"use one of {sorted(ALGORITHMS)}")
        return cls(
            path=str(need("HealthCheckPath")),
            interval_s=int(need("HealthCheckIntervalSeconds")),
            timeout_s=int(need("HealthCheckTimeoutSeconds")),
            healthy_threshold=int(need("HealthyThresholdCount")),
            unhealthy_threshold=int(need("UnhealthyThresholdCount")),
            matcher=str(need("Matcher")["HttpCode"]),
            deregistration_delay_s=int(attrs.get("deregistration_delay.timeout_seconds", "300")),  # AWS's default
            algorithm=algorithm,
            sticky=attrs.get("stickiness.enabled") == "true" and attrs.get("stickiness.type") == "lb_cookie",
            sticky_duration_s=int(attrs.get("stickiness.lb_cookie.duration_seconds", "86400")),
        )


def render_haproxy_cfg(tg: TargetGroupHealth, *, port: int, socket_path: Path, slots: int) -> str:
    """haproxy.cfg: one frontend on 127.0.0.1:``port``, one backend of ``slots`` empty server slots (the runtime
    API at ``socket_path`` fills them in as instances register), health checks as the target group does them."""
    if not 0 < port < 65536:
        raise ValueError(f"port {port}: must be 1-65535")
    if slots < 1:
        raise ValueError(f"slots {slots}: must be at least 1")
    if "," in tg.matcher or "-" in tg.matcher:
        raise TargetGroupError(f"Matcher HttpCode {tg.matcher!r}: the twin's balancer supports one status code")
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True)
    return env.get_template("haproxy.cfg.j2").render(
        tg=tg, port=port, socket_path=str(socket_path), slots=slots, balance=ALGORITHMS[tg.algorithm]
    )
