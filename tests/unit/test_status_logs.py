"""Log lines: below WARNING to stdout, the rest to stderr, one line per event, and lines
logged while a request is served name its network and endpoint."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from driver.ops.logcontext import bind_request
from driver.ops.logs import setup_logging
from driver.worker import Worker


@pytest.fixture
def streams() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out, err = io.StringIO(), io.StringIO()
    setup_logging("debug", out, err)
    yield out, err
    root.handlers[:], root.level = saved  # type: ignore[assignment]


def test_levels_go_to_their_stream_one_line_each(streams: tuple[io.StringIO, io.StringIO]) -> None:
    out, err = streams
    log = logging.getLogger("driver.test")
    log.info("an info")
    log.warning("a warning")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("it failed")
    assert "an info" in out.getvalue() and "a warning" not in out.getvalue()
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and "WARNING driver.test: a warning" in lines[0]
    assert "it failed | Traceback" in lines[1] and "ValueError: boom | second line" in lines[1]


def test_request_ids_are_added_once_unless_named(streams: tuple[io.StringIO, io.StringIO]) -> None:
    out, err = streams
    log = logging.getLogger("driver.test")

    async def request() -> None:
        bind_request(SimpleNamespace(NetworkID="a" * 64, EndpointID="b" * 64))
        log.warning("something about the request")
        log.info("network %s: already named", "a" * 12)
        worker = Worker(5)
        try:
            await worker.run(log.info, "logged on the worker")  # another thread, the request's context
        finally:
            worker.shutdown()

    asyncio.run(request())
    log.info("after the request")
    assert err.getvalue().count("[network aaaaaaaaaaaa endpoint bbbbbbbbbbbb]") == 1
    text = out.getvalue()
    assert "network aaaaaaaaaaaa: already named [endpoint bbbbbbbbbbbb]" in text
    assert "logged on the worker [network aaaaaaaaaaaa endpoint bbbbbbbbbbbb]" in text
    assert text.splitlines()[-1].endswith("after the request")
