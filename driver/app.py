"""The ASGI app: one POST route per verb, and the one place errors become ``{"Err"}``.

dockerd sends no Content-Type and, for four verbs, an empty body, so bodies are read
raw and decoded here rather than by FastAPI. Unknown paths stay 404 (dockerd reads a 404
as "verb not implemented"), but with an ``Err`` body like every other failure.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from driver.api.models import parse
from driver.api.routes import VERBS, Services, Verb
from driver.errors import DriverError, InvalidRequest, TooLarge
from driver.ops.logcontext import bind_request

log = logging.getLogger(__name__)
_SURROGATE = re.compile("[\ud800-\udfff]")

MEDIA_TYPE = "application/vnd.docker.plugins.v1.2+json"
# dockerd's biggest bodies are well under 1 KiB (a CreateEndpoint with a few -p); 1 MiB
# still takes ~10,000 published ports in one request.
MAX_BODY = 1 << 20
# dockerd's deepest body is 4 levels (CreateEndpoint.Options.portmap[i]); anything deeper
# would only reach code that recurses (json itself, repr in a message).
MAX_DEPTH = 32
# An Err reaches the docker CLI verbatim: one that echoes a huge input is cut.
MAX_MESSAGE = 2048


class PluginResponse(JSONResponse):
    media_type = MEDIA_TYPE


def _clamp(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode(verb: str, raw: bytes) -> Any:
    """JSON as dockerd's Go encoder writes it: UTF-8 (never another encoding, an overlong
    form or an encoded surrogate), no NaN/Infinity, at most ``MAX_DEPTH`` levels."""
    if not raw.strip():
        raise InvalidRequest(f"{verb}: empty request body (expected a JSON object)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidRequest(f"{verb}: malformed JSON body: not UTF-8 ({err})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidRequest(f"{verb}: JSON body nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # JSONDecodeError, and integers beyond Python's 4300 digits
        raise InvalidRequest(f"{verb}: malformed JSON body: {err}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"{verb}: body must be a JSON object, got {type(data).__name__}")
    _check_tree(verb, data, escapes="\\u" in text)
    return data


def _check_tree(verb: str, data: dict[str, Any], escapes: bool) -> None:
    """Depth, and lone surrogates (a ``\\ud800`` escape is no character: it could never be
    encoded again, in a record, a log line or an answer). Iterative: no recursion."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"{verb}: JSON body nested deeper than {MAX_DEPTH} levels")
        children = [*node, *node.values()] if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif escapes and isinstance(child, str) and _SURROGATE.search(child):
                raise InvalidRequest(f"{verb}: malformed JSON body: a \\u escape encodes a lone surrogate")


async def read_body(verb: str, request: Request) -> bytes:
    """The body, refused with 413 once it passes ``MAX_BODY``: from Content-Length before
    reading any of it, and while streaming a chunked one (never held whole)."""
    too_large = TooLarge(f"{verb}: request body larger than {MAX_BODY} bytes")
    length = request.headers.get("content-length", "")
    if length.isdigit() and (len(length) > 12 or int(length) > MAX_BODY):
        raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise InvalidRequest(f"{verb}: the client closed the connection before the body was complete") from None
    return b"".join(chunks)


def _endpoint(path: str, verb: Verb, services: Services) -> Any:
    name = path.lstrip("/")
    activity = services.activity

    async def endpoint(request: Request) -> PluginResponse:
        # The one place requests are counted and timed, whatever the verb or outcome.
        started = time.perf_counter()
        token = activity.started(name)
        status = 500
        try:
            body = None
            raw = await read_body(name, request)  # bounded even for the verbs that take no body
            if verb.model is not None:
                body = parse(verb.model, name, decode(name, raw))
                bind_request(body)  # every line logged for this request names its IDs
            result = await verb.handler(services, body)
            status = 200
            return PluginResponse(result)
        except DriverError as exc:
            status = exc.status
            raise
        finally:
            activity.finished(token, status)
            log.debug("%s answered %d in %.1f ms", name, status, (time.perf_counter() - started) * 1000)

    endpoint.__name__ = name.replace(".", "_")
    return endpoint


def create_app(services: Services) -> FastAPI:
    # No redirect for a trailing slash: an unknown path is a 404 with Err, nothing else.
    app = FastAPI(title="pyoverlay", openapi_url=None, docs_url=None, redoc_url=None, redirect_slashes=False)
    for path, verb in VERBS.items():
        app.add_api_route(path, _endpoint(path, verb, services), methods=["POST"])

    @app.exception_handler(DriverError)
    async def driver_error(request: Request, exc: DriverError) -> PluginResponse:
        level = logging.WARNING if exc.status < 500 else logging.ERROR
        message = _clamp(exc.message)
        log.log(level, "%s failed: %s", _clamp(request.scope["path"].lstrip("/"), 200), message)
        return PluginResponse({"Err": message}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> PluginResponse:
        path = _clamp(request.scope["path"], 200)
        return PluginResponse({"Err": f"{path}: {exc.detail}"}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> PluginResponse:
        # Logged with its traceback; the answer names the exception, never the traceback.
        verb = _clamp(request.scope["path"].lstrip("/"), 200)
        log.exception("%s failed unexpectedly", verb)
        message = _clamp(f"{verb}: internal error: {type(exc).__name__}: {exc}")
        return PluginResponse({"Err": message}, status_code=500)

    return app
