"""A loopback TCP proxy between a worker and its dispatcher that can lose answers and partition.

``drop_next_claim_answer()``: the next answer to a claim that hands out a lease is swallowed
and both connections are cut (the claim has committed, the worker never hears of it).
``partition()`` / ``heal()``: while partitioned nothing is forwarded either way; bytes wait in
the proxy and flow again on heal, as after a network split.
"""

from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._drop_claim = False
        self.dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> "FaultProxy":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def drop_next_claim_answer(self) -> None:
        self._drop_claim = True

    def partition(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        state = {"claim": False}
        pipes = [asyncio.ensure_future(self._pipe(client_reader, up_writer, state, upstream=False)),
                 asyncio.ensure_future(self._pipe(up_reader, client_writer, state, upstream=True))]
        self._tasks.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
                self._tasks.discard(task)
            for writer in (client_writer, up_writer):
                with contextlib.suppress(Exception):
                    writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict[str, bool],
                    upstream: bool) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            await self._open.wait()
            if not upstream:
                if data.startswith(b"POST /api/v1/claim"):
                    state["claim"] = True
                elif data[:4] in (b"GET ", b"POST", b"PUT ", b"PATC", b"DELE"):
                    state["claim"] = False
            elif state["claim"] and self._drop_claim and b'"lease":"' in data:
                self._drop_claim = False
                self.dropped += 1
                return   # the answer is lost on the wire; both sides are cut
            writer.write(data)
            await writer.drain()
