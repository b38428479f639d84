"""The Python client of a tqueues dispatcher: ``Client`` (async) and ``SyncClient``.

    async with tqueues.Client("http://127.0.0.1:8000/") as client:
        job = await client.enqueue("myapp.tasks:add", 1, 2, queue="default")
        done = await client.wait(job["id"])
        print(done["status"], done["result"])
"""

from __future__ import annotations

import asyncio
import math
import ssl
import threading
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping, TypeVar

import aiohttp

from . import models, wire
from .errors import ClientError, ConfigurationError, JobFailed, error_from
from .loops import new_event_loop

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000/"


def method_name(method: str | Callable[..., Any]) -> str:
    """``"module:function"`` for a function (or its registered name), or the string given."""
    if isinstance(method, str):
        return method
    name = getattr(method, "__tqueues_name__", None)
    if name:
        return name
    return f"{method.__module__}:{method.__qualname__}"


def job_spec(method: str | Callable[..., Any], args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None,
             *, queue: str = "default", **options: Any) -> dict[str, Any]:
    """A job object as ``POST /api/v1/jobs`` takes it (options with None are left out)."""
    spec: dict[str, Any] = {"queue": queue, "method": method_name(method), "args": list(args),
                            "kwargs": dict(kwargs or {})}
    spec.update({k: v for k, v in options.items() if v is not None})
    return spec


class Client:
    """Async HTTP client of one dispatcher; reuses keep-alive connections.

    ``enqueue`` goes over one websocket (``GET /api/v1/enqueue``), opened on first use and
    shared by every task of the client: a frame each way instead of an HTTP request per job.
    A dispatcher (or a proxy) that does not take the websocket is sent plain ``POST
    /api/v1/jobs`` instead, as is everything when ``channel=False``.
    """

    def __init__(self, endpoint_url: str = DEFAULT_URL, *, session: aiohttp.ClientSession | None = None,
                 timeout: float = 30.0, token: str | None = None, cafile: str | None = None,
                 channel: bool = True) -> None:
        self.endpoint_url = endpoint_url.rstrip("/") + "/"
        self.timeout = timeout
        self._session = session
        self._own_session = session is None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._token, self._cafile = token, cafile   # for the enqueue websocket (tqueues.wire)
        # https with a private CA: verify against cafile (default: the system's CAs)
        self._ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=cafile) if cafile else True
        self._channel: EnqueueChannel | None = EnqueueChannel(self) if channel else None

    def __repr__(self) -> str:
        # Never the token.
        return f"<tqueues.Client {self.endpoint_url}>"

    @property
    def headers(self) -> dict[str, str]:
        """Headers sent with every request (authorisation)."""
        return dict(self._headers)

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ssl=self._ssl), json_serialize=models.dumps_str)
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self._session is not None and self._own_session and not self._session.closed:
            await self._session.close()

    async def request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> Any:
        """Call the dispatcher; the decoded JSON answer, or ClientError naming what went wrong."""
        url = self.endpoint_url + path.lstrip("/")
        data = models.dumps(json) if json is not None else None
        headers = {**self._headers, "Content-Type": "application/json"} if data is not None else self._headers
        try:
            async with self.session.request(method, url, data=data, params=params, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=timeout or self.timeout)) as response:
                body = await response.read()
                status = response.status
        except asyncio.TimeoutError:
            raise ClientError(f"{method} {url}: no answer within {timeout or self.timeout} s", status=0,
                              code="timeout") from None
        except aiohttp.ClientError as exc:
            raise ClientError(f"{method} {url}: {exc}", status=0, code="unreachable") from None
        decoded = models.json_or_none(body)
        if status >= 400:
            raise error_from(status, decoded, f"{method} {url}")
        return decoded

    # ------------------------------------------------------------------ jobs

    async def enqueue(self, method: str | Callable[..., Any], *args: Any, queue: str = "default",
                      kwargs: Mapping[str, Any] | None = None, priority: int | None = None,
                      delay: float | None = None, run_at: float | str | None = None,
                      max_attempts: int | None = None, timeout: float | None = None, key: str | None = None,
                      backoff: float | None = None, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Enqueue one job; returns its document (with ``id``)."""
        spec = job_spec(method, args, kwargs, queue=queue, priority=priority, delay=delay, run_at=run_at,
                        max_attempts=max_attempts, timeout=timeout, key=key, backoff=backoff,
                        data=dict(data) if data is not None else None)
        if self._channel is not None:
            answer = await self._channel.send({"job": spec}, self.timeout)
            if answer is not None:
                return answer["job"]
        return await self.request("POST", "api/v1/jobs", json=spec)

    async def enqueue_many(self, jobs: Iterable[Mapping[str, Any]], *, chunk: int = 5000,
                           documents: bool = True) -> list[dict[str, Any]]:
        """Enqueue job objects (see :func:`job_spec`) in batches, each batch atomically.

        Returns the jobs as stored, in order; with ``documents=False`` only ``{"id", "status",
        "created"}`` for each (``created`` false: its ``key`` matched an existing job), which
        spares both sides the whole documents when loading many jobs."""
        out: list[dict[str, Any]] = []
        body: dict[str, Any] = {} if documents else {"documents": False}
        for part in models.iter_chunks(jobs, chunk):
            answer = await self.request("POST", "api/v1/jobs", json={"jobs": part, **body})
            out.extend(answer["jobs"])
        return out

    async def get(self, job_id: str) -> dict[str, Any]:
        return await self.request("GET", f"api/v1/jobs/{job_id}")

    async def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the job ends (finished, failed or aborted) and return it.

        Driven by the dispatcher's event feed for this job: no polling. Raises ClientError
        with code ``timeout`` when ``timeout`` seconds pass first.
        """
        try:
            return await asyncio.wait_for(self._wait_for_end(job_id), timeout)
        except asyncio.TimeoutError:
            raise ClientError(f"job {job_id} did not end within {timeout} s", status=0, code="timeout") from None

    join = wait

    async def _wait_for_end(self, job_id: str) -> dict[str, Any]:
        # Subscribe first, then read the job: an end between the two is seen either way.
        async with self.watch(job=job_id) as events:
            job = await _through_outages(lambda: self.get(job_id))
            if job["status"] in models.TERMINAL:
                return job
            async for event in events:
                doc = event["new_val"]
                if event["kind"].startswith("job.") and isinstance(doc, dict) and doc.get("status") in models.TERMINAL:
                    return doc
        return await self.get(job_id)  # pragma: no cover - the feed never ends before the job

    def watch(self, *, queue: str | None = None, job: str | None = None, kinds: Iterable[str] | None = None,
              since: int | None = None) -> "EventFeed":
        """Live events as an async iterator (``async with client.watch(queue="q") as events``).

        Reconnects by itself, resuming from the last ``seq`` received, so nothing is missed
        and nothing is repeated.
        """
        return EventFeed(self, queue=queue, job=job, kinds=list(kinds) if kinds else None, since=since)

    async def logs(self, job_id: str, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Captured output lines of a job with ``id`` greater than ``since``."""
        return await self.request("GET", f"api/v1/jobs/{job_id}/logs", params={"since": str(since), "limit": str(limit)})

    async def follow_logs(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """Every line of a job, past then live, until the job ends."""
        async with self.watch(job=job_id) as events:
            last = 0
            while True:
                page = await self.logs(job_id, since=last)
                for line in page:
                    last = line["id"]
                    yield line
                if len(page) < 1000:
                    break
            if (await self.get(job_id))["status"] in models.TERMINAL:
                return
            async for event in events:
                if event["kind"] == models.EV_LOG:
                    for line in event["new_val"]["lines"]:
                        if line["id"] > last:
                            last = line["id"]
                            yield line
                elif isinstance(event["new_val"], dict) and event["new_val"].get("status") in models.TERMINAL:
                    return

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's result once it finished; JobFailed if it failed or was aborted."""
        job = await self.wait(job_id, timeout)
        if job["status"] != models.FINISHED:
            error = job.get("error") or {}
            raise JobFailed(f"job {job_id} {job['status']}: {error.get('type')}: {error.get('message')}", job=job_id)
        return job["result"]

    async def abort(self, job_id: str) -> dict[str, Any]:
        return await self.request("POST", f"api/v1/jobs/{job_id}/abort")

    async def retry(self, job_id: str) -> dict[str, Any]:
        return await self.request("POST", f"api/v1/jobs/{job_id}/retry")

    async def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: str(v) for k, v in filters.items() if v is not None}
        return (await self.request("GET", "api/v1/jobs", params=params))["jobs"]

    async def executions(self, job_id: str) -> list[dict[str, Any]]:
        return await self.request("GET", f"api/v1/jobs/{job_id}/executions")

    async def update(self, job_id: str, data: Mapping[str, Any], lease: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"data": dict(data)}
        if lease is not None:
            body["lease"] = lease
        return await self.request("PATCH", f"api/v1/jobs/{job_id}", json=body)

    # ------------------------------------------------------------------ queues, workers

    async def queues(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "api/v1/queues"))["queues"]

    async def pause(self, queue: str) -> dict[str, Any]:
        return await self.request("POST", f"api/v1/queues/{queue}/pause")

    async def resume(self, queue: str) -> dict[str, Any]:
        return await self.request("POST", f"api/v1/queues/{queue}/resume")

    async def workers(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "api/v1/workers"))["workers"]

    async def stop_worker(self, worker_id: str) -> dict[str, Any]:
        return await self.request("POST", f"api/v1/workers/{worker_id}/stop")

    async def stats(self, window: float = 300.0) -> dict[str, Any]:
        return await self.request("GET", "api/v1/stats", params={"window": str(window)})

    async def prune(self, older_than: float) -> int:
        return (await self.request("POST", "api/v1/prune", json={"older_than": older_than}))["deleted"]

    async def health(self) -> dict[str, Any]:
        return await self.request("GET", "api/v1/health")

    async def last_seq(self) -> int:
        """The seq of the dispatcher's newest event."""
        url = self.endpoint_url + "api/v1/events"
        try:
            async with self.session.get(url, headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                if response.status >= 400:
                    await self.request("GET", "api/v1/events")   # raises the dispatcher's error
                return int(response.headers.get("X-Last-Seq", "0"))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ClientError(f"GET {url}: {exc}", status=0, code="unreachable") from None


class _Socket:
    """One open enqueue websocket and the answers still awaited on it, by ref, each with the
    time it must come by and the timeout that set it."""

    __slots__ = ("ws", "waiting", "reader", "timer")

    def __init__(self, ws: wire.WebSocket) -> None:
        self.ws = ws
        self.waiting: dict[int, tuple[asyncio.Future[dict[str, Any]], float, float]] = {}
        self.reader: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def expire(self) -> None:
        """The one timer of the socket's timeouts (not one per message, which a busy producer
        would pile onto the loop's heap): fail the answers overdue, wait for the next due."""
        self.timer = None
        now = asyncio.get_running_loop().time()
        due = math.inf
        for future, deadline, timeout in list(self.waiting.values()):
            if deadline <= now:
                if not future.done():
                    future.set_exception(ClientError(f"enqueue: no answer within {timeout} s", status=0,
                                                     code="timeout"))
            else:
                due = min(due, deadline)
        if due < math.inf:
            self.timer = asyncio.get_running_loop().call_at(due, self.expire)


class EnqueueChannel:
    """A client's websocket to ``GET /api/v1/enqueue``: many enqueues in flight at once,
    each answer matched to its message by ``ref``.

    Opened on first use and again after it closed. If the connection is lost, the enqueues
    still awaiting an answer fail with ClientError ``unreachable`` (as an HTTP request cut
    in flight would: send an idempotency ``key`` to retry them safely). A dispatcher that
    refuses the websocket is asked over HTTP instead (``send`` answers None): for this one
    call when the refusal may pass (401, 403, 429, 5xx), for good when it has no such route.

    The socket is tqueues' own (:mod:`tqueues.wire`, as workers use), not aiohttp's, with one
    timer for all its timeouts rather than one per message. It connects straight to
    ``endpoint_url`` with the client's token and ``cafile``; a ``session`` given to the client
    carries only the HTTP requests.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._wire: wire.Wire | None = None
        self._socket: _Socket | None = None
        self._opening = asyncio.Lock()
        self._refs = 0
        self.unavailable = False

    async def close(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.ws.close()
            if socket.reader is not None:
                await asyncio.gather(socket.reader, return_exceptions=True)
        if self._wire is not None:
            await self._wire.close()
            self._wire = None

    async def send(self, body: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """The dispatcher's answer to one message (a 2xx), ClientError for an error answer, or
        None when the websocket is not available and the caller should use HTTP."""
        socket = self._socket
        if socket is None or socket.ws.closed:
            if self.unavailable:
                return None
            socket = await self._open()
            if socket is None:
                return None
        loop = asyncio.get_running_loop()
        self._refs += 1
        ref = self._refs
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        deadline = loop.time() + timeout
        socket.waiting[ref] = (future, deadline, timeout)
        if socket.timer is None or socket.timer.when() > deadline:
            if socket.timer is not None:
                socket.timer.cancel()
            socket.timer = loop.call_at(deadline, socket.expire)
        try:
            await socket.ws.send_text(models.dumps_str({"ref": ref, **body}))
            answer = await future
        except (ConnectionError, OSError) as exc:
            raise ClientError(f"enqueue websocket: {exc}", status=0, code="unreachable") from None
        finally:
            socket.waiting.pop(ref, None)
        status = answer.get("status")
        if not isinstance(status, int) or status >= 400:
            error = error_from(status if isinstance(status, int) else 502, answer, "enqueue websocket")
            error.retry_after = answer.get("retry_after")   # type: ignore[attr-defined]
            raise error
        return answer

    async def _open(self) -> _Socket | None:
        async with self._opening:
            if self._socket is not None and not self._socket.ws.closed:
                return self._socket
            client = self._client
            if self._wire is None:
                try:
                    self._wire = wire.Wire(client.endpoint_url, token=client._token, cafile=client._cafile,
                                           timeout=client.timeout)
                except ConfigurationError:
                    self.unavailable = True   # an endpoint URL only HTTP may make sense of: it says
                    return None
            try:
                ws = await self._wire.websocket("api/v1/enqueue", heartbeat=30.0)
            except ClientError as exc:
                if exc.status in (400, 404, 405, 501):   # a dispatcher (or proxy) without the route
                    self.unavailable = True
                return None   # otherwise HTTP says what is wrong (unreachable, TLS, ...)
            socket = self._socket = _Socket(ws)
            socket.reader = asyncio.ensure_future(self._read(socket))
            return socket

    async def _read(self, socket: _Socket) -> None:
        try:
            async for text in socket.ws:
                try:
                    answer = models.loads(text)
                except ValueError:
                    continue
                waiting = socket.waiting.pop(answer.get("ref"), None) if isinstance(answer, dict) else None
                if waiting is not None and not waiting[0].done():
                    waiting[0].set_result(answer)
        finally:
            if self._socket is socket:
                self._socket = None
            lost = ClientError("enqueue websocket: the connection closed before the answer", status=0,
                               code="unreachable")
            for future, _, _ in socket.waiting.values():
                if not future.done():
                    future.set_exception(lost)
            socket.waiting.clear()
            if socket.timer is not None:
                socket.timer.cancel()
                socket.timer = None


TRANSIENT = (502, 503, 504)


def _retry_after(headers: Any) -> float | None:
    try:
        return max(0.0, float((headers or {}).get("Retry-After", "")))
    except (TypeError, ValueError):
        return None


async def _through_outages(call: Callable[[], Awaitable[T]], unreachable_ok: bool = False) -> T:
    """``call()``, retried with backoff while the dispatcher is busy or has lost its database
    (502, 503, 504, honouring Retry-After), and while it is unreachable when ``unreachable_ok``;
    any other error (a 4xx refusal) is raised at once."""
    delay = 0.2
    while True:
        try:
            return await call()
        except ClientError as exc:
            if exc.status in TRANSIENT:
                wait = getattr(exc, "retry_after", None) or delay
            elif exc.status == 0 and unreachable_ok:
                wait = delay
            else:
                raise
        await asyncio.sleep(min(wait, 5.0))
        delay = min(delay * 2, 5.0)


class EventFeed:
    """An async iterator of events over a websocket; reconnects and resumes from the last seq."""

    def __init__(self, client: Client, *, queue: str | None, job: str | None, kinds: list[str] | None,
                 since: int | None) -> None:
        self._client = client
        self._params: dict[str, str] = {}
        if queue:
            self._params["queue"] = queue
        if job:
            self._params["job"] = job
        if kinds:
            self._params["kind"] = ",".join(kinds)
        self.last_seq = since
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> "EventFeed":
        await _through_outages(self._connect)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def _connect(self) -> None:
        url = self._client.endpoint_url + "api/v1/events"
        if self.last_seq is None:
            # Start from the dispatcher's newest seq, so a reconnect can resume from it.
            self.last_seq = await self._client.last_seq()
        params = {**self._params, "since": str(self.last_seq)}
        try:
            self._ws = await self._client.session.ws_connect(url, params=params, headers=self._client.headers,
                                                             heartbeat=20, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            error = ClientError(f"GET {url}: websocket refused: HTTP {exc.status}", status=exc.status,
                                code="websocket_refused")
            error.retry_after = _retry_after(exc.headers)   # type: ignore[attr-defined]
            raise error from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ClientError(f"GET {url}: {exc}", status=0, code="unreachable") from None

    def __aiter__(self) -> "EventFeed":
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            if self._ws is None:
                await _through_outages(self._connect, unreachable_ok=True)
            assert self._ws is not None
            message = await self._ws.receive()
            if message.type == aiohttp.WSMsgType.TEXT:
                event = models.loads(message.data)
                self.last_seq = event["seq"]
                return event
            # closed (slow subscriber, dispatcher restart, network): resume from the last seq
            await self.close()
            await asyncio.sleep(0.05)


class SyncClient:
    """The same calls as :class:`Client`, blocking; runs its own event loop in a thread (uvloop
    where it is installed, see :mod:`tqueues.loops`)."""

    def __init__(self, endpoint_url: str = DEFAULT_URL, **options: Any) -> None:
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tqueues-client", daemon=True)
        self._thread.start()
        self._client = Client(endpoint_url, **options)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        attr = getattr(self._client, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._run(attr(*args, **kwargs))

        return call

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
