"""Request parsing and JSON answers shared by every dispatcher view."""

from __future__ import annotations

import math
from typing import Any, Mapping

from aiohttp import web

from .. import models
from ..errors import InvalidRequest

JSON = "application/json"


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=models.dumps(obj), status=status, content_type=JSON, headers=headers)


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
                   **details: Any) -> web.Response:
    return json_response({"error": {"code": code, "message": message, **details}}, status, headers)


def is_form(request: web.Request) -> bool:
    return request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")


async def read_json(request: web.Request, *, allow_empty: bool = False) -> Any:
    """The request body as JSON; InvalidRequest when it is not."""
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise InvalidRequest("the request body is empty; a JSON body is required")
    try:
        return models.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


async def read_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    body = await read_json(request, allow_empty=allow_empty)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _json_field(name: str, value: str) -> Any:
    try:
        return models.loads(value)
    except ValueError:
        raise InvalidRequest(f"{name}: form fields must hold JSON ({value[:40]!r} is not)", field=name) from None


async def read_form_job(request: web.Request) -> dict[str, Any]:
    """A job from a form body, as TQueues clients sent it: args and kwargs as JSON text
    (or ``args`` repeated, one plain value each)."""
    try:
        form = await request.post()
    except (ValueError, LookupError) as exc:   # broken multipart, bytes not in the charset, unknown charset
        raise InvalidRequest(f"the form body cannot be read: {exc}") from None
    job: dict[str, Any] = {}
    for name in form.keys():
        values = form.getall(name)
        if not all(isinstance(v, str) for v in values):
            raise InvalidRequest(f"{name}: file uploads are not accepted", field=name)
        if name == "args":
            if len(values) == 1 and values[0].lstrip().startswith("["):
                job["args"] = _json_field("args", values[0])
            else:
                job["args"] = list(values)
        elif name in ("kwargs", "data"):
            job[name] = _json_field(name, values[-1])
        elif name in ("priority", "max_attempts"):
            job[name] = _json_field(name, values[-1])
        elif name in ("delay", "timeout", "backoff", "run_at"):
            value = values[-1]
            job[name] = _json_field(name, value) if value[:1].isdigit() or value[:1] == "-" else value
        else:
            job[name] = values[-1]
    return job


def query_str(request: web.Request, name: str, *, required: bool = False) -> str | None:
    value = request.query.get(name)
    if value is None or value == "":
        if required:
            raise InvalidRequest(f"{name}: the query parameter is required", field=name)
        return None
    return value


def query_float(request: web.Request, name: str, default: float, *, minimum: float, maximum: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: a number is required", field=name) from None
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise InvalidRequest(f"{name}: must be between {minimum} and {maximum}", field=name)
    return value


def query_int(request: web.Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: an integer is required", field=name) from None
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"{name}: must be between {minimum} and {maximum}", field=name)
    return value


def field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True,
          default: Any = None) -> Any:
    """``body[name]`` checked against ``kind`` (bools are not numbers)."""
    if name not in body or body[name] is None:
        if required:
            raise InvalidRequest(f"{name}: is required", field=name)
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidRequest(f"{name}: must be {' or '.join(k.__name__ for k in kinds)}", field=name)
    if not isinstance(value, kinds):
        raise InvalidRequest(f"{name}: must be {' or '.join(k.__name__ for k in kinds)}", field=name)
    return value


def number(body: Mapping[str, Any], name: str, default: float, *, minimum: float, maximum: float) -> float:
    value = field(body, name, (int, float), required=False, default=default)
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise InvalidRequest(f"{name}: must be between {minimum} and {maximum}", field=name)
    return float(value)


def integer(body: Mapping[str, Any], name: str, default: int, *, minimum: int, maximum: int) -> int:
    value = field(body, name, int, required=False, default=default)
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"{name}: must be between {minimum} and {maximum}", field=name)
    return value


def batch(body: Mapping[str, Any], name: str) -> list[Any]:
    """``body[name]``: a list of at most MAX_BATCH items."""
    items = field(body, name, list)
    if len(items) > models.MAX_BATCH:
        raise InvalidRequest(f"{name}: at most {models.MAX_BATCH} items", field=name)
    return items


def leases(body: Mapping[str, Any], name: str = "leases") -> list[tuple[str, str]]:
    """``[{"id", "lease"}, …]`` from a body."""
    items = batch(body, name)
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequest(f"{name}[{index}]: must be an object with id and lease", field=name)
        out.append((field(item, "id", str), field(item, "lease", str)))
    return out
