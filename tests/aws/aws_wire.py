"""The AWS wire protocols the test doubles speak, driven by botocore's service models (never by hand-written
shapes): decode a query/ec2/json request into the operation's input, encode a result or an error the way AWS
does, and check both against the model.

- ``decode_request``: the form body of a query (Auto Scaling, ELBv2, CloudWatch) or ec2 request, or the JSON body
  of a json-protocol request (SSM), walked along the operation's input shape.
- ``encode_result`` / ``encode_error``: the response XML (query) or JSON (json protocol); every encoded result is
  parsed back with botocore's own response parser and must come back equal, so what a double sends is exactly
  what a botocore client reads.
- ``check_shape``: required members, types, enums, ranges and lengths as the model states them (botocore's own
  validator only checks part of that); the doubles run it on every request they receive and every response they
  send or forward.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import urllib.parse
import uuid
from typing import Any
from xml.sax.saxutils import escape

import botocore.parsers
import botocore.session
from botocore.model import OperationModel, Shape

_SESSION = botocore.session.get_session()
_MODELS: dict[str, Any] = {}


def service_model(service: str):
    if service not in _MODELS:
        _MODELS[service] = _SESSION.get_service_model(service)
    return _MODELS[service]


def operation(service: str, name: str) -> OperationModel:
    return service_model(service).operation_model(name)


# ---- requests -----------------------------------------------------------------------------------------------
def _query_name(shape: Shape, default: str, protocol: str) -> str:
    if protocol == "ec2":
        if "queryName" in shape.serialization:
            return shape.serialization["queryName"]
        if "name" in shape.serialization:
            name = shape.serialization["name"]
            return name[0].upper() + name[1:]
        return default
    return shape.serialization.get("name", default)


def _present(flat: dict[str, str], prefix: str) -> bool:
    dotted = prefix + "."
    return prefix in flat or any(k.startswith(dotted) for k in flat)


def _scalar(raw: str, shape: Shape) -> Any:
    kind = shape.type_name
    if kind in ("integer", "long"):
        return int(raw)
    if kind in ("float", "double"):
        return float(raw)
    if kind == "boolean":
        if raw not in ("true", "false"):
            raise ValueError(f"{raw!r} is not a boolean")
        return raw == "true"
    if kind == "timestamp":
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if kind == "blob":
        return base64.b64decode(raw)
    return raw


def _decode_flat(flat: dict[str, str], shape: Shape, prefix: str, protocol: str) -> Any:
    kind = shape.type_name
    if kind == "structure":
        out: dict[str, Any] = {}
        for name, member in shape.members.items():
            key = _query_name(member, name, protocol)
            path = f"{prefix}.{key}" if prefix else key
            if _present(flat, path):
                out[name] = _decode_flat(flat, member, path, protocol)
        return out
    if kind == "list":
        if protocol == "query" and flat.get(prefix) == "":
            return []
        if protocol == "ec2" or shape.serialization.get("flattened"):
            base = prefix
        else:
            base = f"{prefix}.{shape.member.serialization.get('name', 'member')}"
        items, i = [], 1
        while _present(flat, f"{base}.{i}"):
            items.append(_decode_flat(flat, shape.member, f"{base}.{i}", protocol))
            i += 1
        return items
    if kind == "map":
        base = prefix if shape.serialization.get("flattened") else f"{prefix}.entry"
        key_name = _query_name(shape.key, "key", protocol)
        value_name = _query_name(shape.value, "value", protocol)
        out, i = {}, 1
        while _present(flat, f"{base}.{i}"):
            k = _decode_flat(flat, shape.key, f"{base}.{i}.{key_name}", protocol)
            out[k] = _decode_flat(flat, shape.value, f"{base}.{i}.{value_name}", protocol)
            i += 1
        return out
    return _scalar(flat[prefix], shape)


def _from_json(value: Any, shape: Shape) -> Any:
    kind = shape.type_name
    if kind == "structure":
        return {k: _from_json(v, shape.members[k]) for k, v in value.items() if k in shape.members}
    if kind == "list":
        return [_from_json(v, shape.member) for v in value]
    if kind == "map":
        return {k: _from_json(v, shape.value) for k, v in value.items()}
    if kind == "timestamp":
        return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)
    if kind == "blob":
        return base64.b64decode(value)
    return value


def action_of(body: bytes, headers: dict[str, str]) -> str | None:
    """The operation a request asks for: X-Amz-Target (json protocol) or the form's Action."""
    target = {k.lower(): v for k, v in headers.items()}.get("x-amz-target")
    if target:
        return target.rsplit(".", 1)[-1]
    form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)) if body else {}
    return form.get("Action")


def decode_request(service: str, body: bytes) -> tuple[OperationModel, dict[str, Any]]:
    """(operation, input) of a request to ``service``; unknown members are an error, as AWS would say."""
    model = service_model(service)
    if model.protocol == "json":
        raise ValueError("json requests need the X-Amz-Target: use decode_json_request")
    form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
    op = model.operation_model(form.pop("Action"))
    form.pop("Version", None)
    params = _decode_flat(form, op.input_shape, "", model.protocol) if op.input_shape else {}
    return op, params


def decode_json_request(service: str, target: str, body: bytes) -> tuple[OperationModel, dict[str, Any]]:
    op = service_model(service).operation_model(target.rsplit(".", 1)[-1])
    raw = json.loads(body or b"{}")
    unknown = set(raw) - set(op.input_shape.members if op.input_shape else ())
    if unknown:
        raise ValueError(f"unknown members {sorted(unknown)}")
    return op, _from_json(raw, op.input_shape) if op.input_shape else {}


# ---- responses ----------------------------------------------------------------------------------------------
def _iso(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _members_xml(value: dict[str, Any], shape: Shape) -> str:
    return "".join(
        _xml(v, shape.members[k], shape.members[k].serialization.get("name", k))
        for k, v in value.items()
        if v is not None
    )


def _xml(value: Any, shape: Shape, name: str) -> str:
    kind = shape.type_name
    if kind == "structure":
        return f"<{name}>{_members_xml(value, shape)}</{name}>"
    if kind == "list":
        member_name = shape.member.serialization.get("name", "member")
        if shape.serialization.get("flattened"):
            return "".join(_xml(v, shape.member, name) for v in value)
        return f"<{name}>" + "".join(_xml(v, shape.member, member_name) for v in value) + f"</{name}>"
    if kind == "map":
        entries = "".join(
            "<entry>" + _xml(k, shape.key, "key") + _xml(v, shape.value, "value") + "</entry>" for k, v in value.items()
        )
        return f"<{name}>{entries}</{name}>"
    if kind == "boolean":
        text = "true" if value else "false"
    elif kind == "timestamp":
        text = _iso(value)
    elif kind == "blob":
        text = base64.b64encode(value).decode()
    else:
        text = escape(str(value))
    return f"<{name}>{text}</{name}>"


def _json_ready(value: Any, shape: Shape) -> Any:
    kind = shape.type_name
    if kind == "structure":
        return {k: _json_ready(v, shape.members[k]) for k, v in value.items() if v is not None}
    if kind == "list":
        return [_json_ready(v, shape.member) for v in value]
    if kind == "map":
        return {k: _json_ready(v, shape.value) for k, v in value.items()}
    if kind == "timestamp":
        return value.timestamp()
    if kind == "blob":
        return base64.b64encode(value).decode()
    return value


def request_id() -> str:
    return str(uuid.uuid4())


def encode_result(op: OperationModel, result: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a successful response; checked against the model and parsed back by botocore."""
    problems = check_shape(result, op.output_shape, "response") if op.output_shape else []
    if problems:
        raise AssertionError(f"{op.name}: the double built a response the model does not allow: {problems}")
    model = op.service_model
    rid = request_id()
    if model.protocol == "json":
        body = json.dumps(_json_ready(result, op.output_shape) if op.output_shape else {}).encode()
        headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": rid}
    elif model.protocol == "ec2":  # members straight under the root element, with the request id beside them
        inner = _members_xml(result, op.output_shape) if op.output_shape else ""
        ns = model.metadata.get("xmlNamespace", "")
        body = f'<{op.name}Response xmlns="{ns}"><requestId>{rid}</requestId>{inner}</{op.name}Response>'.encode()
        headers = {"Content-Type": "text/xml;charset=UTF-8", "x-amzn-RequestId": rid}
    else:
        wrapper = op.output_shape.serialization.get("resultWrapper") if op.output_shape else None
        inner = _members_xml(result, op.output_shape) if wrapper else ""
        ns = model.metadata.get("xmlNamespace", "")
        body = (
            f'<{op.name}Response xmlns="{ns}">'
            + (f"<{wrapper}>{inner}</{wrapper}>" if wrapper else "")
            + f"<ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata></{op.name}Response>"
        ).encode()
        headers = {"Content-Type": "text/xml", "x-amzn-RequestId": rid}
    back = parse_response(op, 200, headers, body)
    back.pop("ResponseMetadata", None)
    if back != _normalised(result, op.output_shape):
        raise AssertionError(f"{op.name}: botocore reads back {back!r}, not {result!r}")
    return 200, headers, body


def _normalised(value: Any, shape: Shape | None) -> Any:
    """What botocore's parser yields for ``value``: timestamps as aware datetimes, None members dropped."""
    if shape is None:
        return {}
    kind = shape.type_name
    if kind == "structure":
        return {k: _normalised(v, shape.members[k]) for k, v in value.items() if v is not None}
    if kind == "list":
        return [_normalised(v, shape.member) for v in value]
    if kind == "map":
        return {k: _normalised(v, shape.value) for k, v in value.items()}
    if kind == "timestamp":
        v = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return v.replace(microsecond=v.microsecond // 1000 * 1000)
    return value


def encode_error(service: str, code: str, message: str, status: int = 400) -> tuple[int, dict[str, str], bytes]:
    """An error as AWS sends it: the query ErrorResponse document, or the json protocol's __type."""
    model = service_model(service)
    rid = request_id()
    if model.protocol == "json":
        body = json.dumps({"__type": code, "message": message}).encode()
        return status, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": rid}, body
    ns = model.metadata.get("xmlNamespace", "")
    kind = "Sender" if status < 500 else "Receiver"
    body = (
        f'<ErrorResponse xmlns="{ns}"><Error><Type>{kind}</Type><Code>{escape(code)}</Code>'
        f"<Message>{escape(message)}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>"
    ).encode()
    return status, {"Content-Type": "text/xml", "x-amzn-RequestId": rid}, body


def parse_response(op: OperationModel, status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """A response as a botocore client reads it (botocore's own parser for the service's protocol)."""
    parser = botocore.parsers.create_parser(op.service_model.protocol)
    return parser.parse(
        {"status_code": status, "headers": {k.lower(): v for k, v in headers.items()}, "body": body},
        op.output_shape,
    )


# ---- the model's constraints ----------------------------------------------------------------------------------
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "long": (int,),
    "boolean": (bool,),
    "float": (float, int),
    "double": (float, int),
    "timestamp": (dt.datetime,),
    "blob": (bytes, bytearray, str),
    "structure": (dict,),
    "list": (list,),
    "map": (dict,),
}


def check_shape(value: Any, shape: Shape, path: str, enums: bool = True) -> list[str]:
    """Every way ``value`` breaks ``shape``: type, required members, enum, min/max value, min/max length.

    ``enums=False`` for answers the doubles did not write: the models' enums are open-ended for responses (AWS itself
    answers values outside them, e.g. an instance's Platform "windows" where the enum says "Windows"), and an empty
    list where the model's minimum is 1 is how JSON services say "none" (GetParameters' InvalidParameters: []).
    """
    problems: list[str] = []
    kind = shape.type_name
    if not isinstance(value, _TYPES[kind]) or (kind in ("integer", "long") and isinstance(value, bool)):
        return [f"{path}: {type(value).__name__} where the model has {kind}"]
    meta = shape.metadata
    if kind == "structure":
        for name in shape.required_members:
            if value.get(name) is None:
                problems.append(f"{path}.{name}: required member missing")
        for name, v in value.items():
            if name not in shape.members:
                problems.append(f"{path}.{name}: not a member of {shape.name}")
            elif v is not None:
                problems += check_shape(v, shape.members[name], f"{path}.{name}", enums)
    elif kind == "list":
        for i, v in enumerate(value):
            problems += check_shape(v, shape.member, f"{path}[{i}]", enums)
    elif kind == "map":
        for k, v in value.items():
            problems += check_shape(k, shape.key, f"{path}.key", enums)
            problems += check_shape(v, shape.value, f"{path}[{k}]", enums)
    if kind in ("string", "list", "map", "blob"):
        if "min" in meta and len(value) < meta["min"] and (enums or kind == "string" or value):
            problems.append(f"{path}: length {len(value)} below the model's minimum {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: length {len(value)} above the model's maximum {meta['max']}")
    if kind in ("integer", "long", "float", "double"):
        if "min" in meta and value < meta["min"]:
            problems.append(f"{path}: {value} below the model's minimum {meta['min']}")
        if "max" in meta and value > meta["max"]:
            problems.append(f"{path}: {value} above the model's maximum {meta['max']}")
    if enums and kind == "string" and getattr(shape, "enum", None) and value not in shape.enum:
        problems.append(f"{path}: {value!r} is not one of {shape.enum}")
    return problems
