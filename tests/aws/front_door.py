"""A small HTTP server on loopback in front of the emulator: the doubles answer what moto cannot, everything else
is forwarded to moto unchanged, and every request and response is checked against botocore's service model.

The production code reaches it exactly as it reaches AWS: through ``AWS_ENDPOINT_URL`` (boto3's standard
endpoint variable), signing its requests for the real service names. What it answers itself, and why:

- Auto Scaling's four instance-refresh operations: refresh_double.py (moto: NotImplemented).
- ec2:CreateLaunchTemplateVersion with SourceVersion: moto ignores SourceVersion (the new version keeps only what
  was passed). AWS's documented semantics are applied before the request reaches moto: the new version inherits
  every launch parameter of the source version, the ones given override them, and snapshot ids in inherited block
  device mappings are dropped (ec2 API reference, CreateLaunchTemplateVersion SourceVersion).
- The launch template version each Auto Scaling instance reports: moto reports the template's default version for
  every instance; the answer is corrected to the version the instance was launched from.
- ec2:GetConsoleOutput and ELBv2 target health: what the instances' Nextcloud would print or answer
  (nextcloud_double.py) is added to the emulator's answer; the emulator's instances run nothing.

Model checks: every query/ec2/json request is decoded along the operation's input shape and checked
(aws_wire.check_shape); every response, the doubles' and the emulator's, is parsed with botocore's parser and
checked against the output shape. Problems are collected in ``violations`` and fail the test that caused them.
CloudWatch speaks smithy-rpc-v2-cbor and is forwarded without a check (only DescribeAlarms, a read).
"""

from __future__ import annotations

import base64
import http.client
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aws_wire as wire
import botocore.serialize
from nextcloud_double import NextcloudClusterDouble
from refresh_double import InstanceRefreshDouble, RefreshError
from virtual_clock import VirtualClock

REFRESH_OPS = {
    "StartInstanceRefresh": "start",
    "DescribeInstanceRefreshes": "describe",
    "CancelInstanceRefresh": "cancel",
    "RollbackInstanceRefresh": "rollback_refresh",
}
SIGNING_TO_SERVICE = {"monitoring": "cloudwatch", "elasticloadbalancing": "elbv2"}
CHECKED_PROTOCOLS = ("query", "ec2", "json")


def _scope(headers: dict[str, str]) -> tuple[str, str]:
    """(region, signing name) from the SigV4 Authorization header's credential scope."""
    auth = headers.get("authorization", "")
    parts = auth.split("Credential=", 1)[-1].split(",", 1)[0].split("/")
    return (parts[2], parts[3]) if len(parts) > 4 else ("", "")


class FrontDoor:
    """The emulator plus its doubles, on one loopback URL; ``close()`` stops it."""

    def __init__(self, moto_url: str, region: str, step_seconds: float = 60.0):
        self.moto_url = moto_url
        self.clock = VirtualClock(step=step_seconds)
        self.refresh = InstanceRefreshDouble(moto_url, self.clock)
        self.nextcloud = NextcloudClusterDouble(moto_url, self.clock, region)
        self.violations: list[str] = []
        self.seen: list[tuple[str, str]] = []
        # False: answer CreateLaunchTemplateVersion as moto does (SourceVersion ignored), to test that the production
        # code notices an endpoint that does not inherit.
        self.inherit_source_version = True
        door = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The headers and the body go out in two writes: with Nagle's algorithm on, the body waits for the
            # client's delayed ACK, 40 ms on every request (most of a rollout test's time).
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    status, headers, payload = door.dispatch(self.command, self.path, dict(self.headers.items()), body)
                except Exception as exc:  # noqa: BLE001 - a double's bug must fail the test, not hang the client
                    door.violations.append(f"the front door failed on {self.path}: {exc!r}")
                    status, headers, payload = 500, {"Content-Type": "text/plain"}, repr(exc).encode()
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- one request ----------------------------------------------------------------------------------------
    def dispatch(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        lower = {k.lower(): v for k, v in headers.items()}
        region, signing = _scope(lower)
        service = SIGNING_TO_SERVICE.get(signing, signing)
        if not service or path.startswith("/moto-api"):
            return self._forward(method, path, headers, body)
        model = wire.service_model(service)
        op, params = None, None
        if model.protocol in CHECKED_PROTOCOLS:
            try:
                if model.protocol == "json":
                    op, params = wire.decode_json_request(service, lower.get("x-amz-target", ""), body)
                else:
                    op, params = wire.decode_request(service, body)
            except Exception as exc:  # noqa: BLE001 - any decoding failure is a finding
                self.violations.append(f"{service}: request not decodable along the model: {exc!r}")
                return wire.encode_error(service, "ValidationError", f"undecodable request: {exc}")
            problems = wire.check_shape(params, op.input_shape, f"{op.name} request") if op.input_shape else []
            self.violations += problems
            self.seen.append((service, op.name))
        try:
            answer = self._answer(service, region, op, params)
        except RefreshError as exc:
            return wire.encode_error(service, exc.code, exc.message, exc.status)
        if answer is not None:
            return wire.encode_result(op, answer)
        if op is not None and (service, op.name) == ("ec2", "CreateLaunchTemplateVersion") and self.inherit(params):
            body = self._inherit_source_version(region, op, params)
        status, out_headers, payload = self._forward(method, path, headers, body)
        if op is None or status >= 300:
            return status, out_headers, payload
        parsed = wire.parse_response(op, status, out_headers, payload)
        parsed.pop("ResponseMetadata", None)
        if op.output_shape is not None:
            self.violations += wire.check_shape(parsed, op.output_shape, f"{op.name} response (emulator)", enums=False)
        fixed = self._fix_response(service, region, op.name, parsed)
        return wire.encode_result(op, fixed) if fixed is not None else (status, out_headers, payload)

    def _answer(self, service: str, region: str, op: Any, params: Any) -> dict[str, Any] | None:
        if op is None:
            return None
        if service == "autoscaling" and op.name in REFRESH_OPS:
            return getattr(self.refresh, REFRESH_OPS[op.name])(region, params)
        return None

    def inherit(self, params: dict[str, Any]) -> bool:
        return self.inherit_source_version and "SourceVersion" in params

    def _inherit_source_version(self, region: str, op: Any, params: dict[str, Any]) -> bytes:
        ec2 = self.refresh.client("ec2", region)
        ident = {k: params[k] for k in ("LaunchTemplateId", "LaunchTemplateName") if k in params}
        source = ec2.describe_launch_template_versions(**ident, Versions=[params["SourceVersion"]])
        inherited = _as_request(source["LaunchTemplateVersions"][0]["LaunchTemplateData"],
                                op.input_shape.members["LaunchTemplateData"])
        for mapping in inherited.get("BlockDeviceMappings", []):
            (mapping.get("Ebs") or {}).pop("SnapshotId", None)
        merged = {k: v for k, v in params.items() if k != "SourceVersion"}
        merged["LaunchTemplateData"] = {**inherited, **params.get("LaunchTemplateData", {})}
        request = botocore.serialize.create_serializer("ec2").serialize_to_request(merged, op)
        return urllib.parse.urlencode(request["body"]).encode()

    def _fix_response(self, service: str, region: str, name: str, parsed: dict[str, Any]) -> dict[str, Any] | None:
        if service == "autoscaling" and name in ("DescribeAutoScalingGroups", "DescribeAutoScalingInstances"):
            with self.refresh.lock:
                groups = parsed.get("AutoScalingGroups", [])
                for group in groups:
                    self.refresh.observe_group(region, group)
                    instances = group.get("Instances", [])
                    self._fix_versions(region, instances)
                self._fix_versions(region, parsed.get("AutoScalingInstances", []))
            return parsed
        if service == "ec2" and name == "GetConsoleOutput" and parsed.get("InstanceId"):
            moto = base64.b64decode(parsed.get("Output") or "").decode(errors="replace")
            text = moto + self.nextcloud.console(parsed["InstanceId"])
            parsed["Output"] = base64.b64encode(text.encode()).decode()
            return parsed
        if service == "elbv2" and name == "DescribeTargetHealth":
            for desc in parsed.get("TargetHealthDescriptions", []):
                target = desc.get("Target", {}).get("Id", "")
                if target.startswith("i-"):
                    ready = self.nextcloud.readiness(target)
                    desc["TargetHealth"] = (
                        {"State": "healthy"} if ready["ready"] else
                        {"State": "unhealthy", "Reason": "Target.ResponseCodeMismatch",
                         "Description": f"Health checks failed with these codes: [503] ({ready['code']})"}
                    )
            return parsed
        return None

    def _fix_versions(self, region: str, instances: list[dict[str, Any]]) -> None:
        for inst in instances:
            known = self.refresh.versions.get((region, inst["InstanceId"]))
            if known and inst.get("LaunchTemplate"):
                inst["LaunchTemplate"]["LaunchTemplateId"], inst["LaunchTemplate"]["Version"] = known

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        target = urllib.parse.urlsplit(self.moto_url)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        try:
            keep = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")}
            keep["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=keep)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()


def _as_request(value: Any, shape: Any) -> Any:
    """A DescribeLaunchTemplateVersions answer reshaped into CreateLaunchTemplateVersion input (same member names;
    members the request shape does not have are left out)."""
    kind = shape.type_name
    if kind == "structure":
        return {k: _as_request(v, shape.members[k]) for k, v in value.items() if k in shape.members}
    if kind == "list":
        return [_as_request(v, shape.member) for v in value]
    return value
