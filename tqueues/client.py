"""The Python client of a tqueues dispatcher: ``Client`` (async) and ``SyncClient``.

    async with tqueues.Client("http://127.0.0.1:8000/") as client:
        job = await client.enqueue("myapp.tasks:add", 1, 2, queue="default")
        done = await client.wait(job["id"])
        print(done["status"], done["result"])
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable, Coroutine, Iterable, Mapping, TypeVar

import aiohttp

from . import models
from .errors import ClientError, JobFailed

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
    """Async HTTP client of one dispatcher; reuses keep-alive connections."""

    def __init__(self, endpoint_url: str = DEFAULT_URL, *, session: aiohttp.ClientSession | None = None,
                 timeout: float = 30.0, token: str | None = None) -> None:
        self.endpoint_url = endpoint_url.rstrip("/") + "/"
        self.timeout = timeout
        self._session = session
        self._own_session = session is None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

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
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60), json_serialize=models.dumps_str)
            self._own_session = True
        return self._session

    async def close(self) -> None:
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
        try:
            decoded = models.loads(body) if body else None
        except ValueError:
            decoded = None
        if status >= 400:
            error = decoded.get("error") if isinstance(decoded, dict) else None
            if isinstance(error, dict):
                raise ClientError(str(error.get("message")), status=status, code=str(error.get("code")),
                                  **{k: v for k, v in error.items() if k not in ("message", "code")})
            raise ClientError(f"{method} {url}: HTTP {status}", status=status, code="http_error")
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
        return await self.request("POST", "api/v1/jobs", json=spec)

    async def enqueue_many(self, jobs: Iterable[Mapping[str, Any]], *, chunk: int = 5000) -> list[dict[str, Any]]:
        """Enqueue job objects (see :func:`job_spec`) in batches, each batch atomically."""
        out: list[dict[str, Any]] = []
        for part in models.iter_chunks(jobs, chunk):
            answer = await self.request("POST", "api/v1/jobs", json={"jobs": part})
            out.extend(answer["jobs"])
        return out

    async def get(self, job_id: str) -> dict[str, Any]:
        return await self.request("GET", f"api/v1/jobs/{job_id}")

    async def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the job ends (finished, failed or aborted) and return it.

        The dispatcher holds each request until the job ends (no polling loop here).
        Raises ClientError with code ``timeout`` when ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = 55.0 if deadline is None else min(55.0, deadline - time.monotonic())
            job = await self.request("GET", f"api/v1/jobs/{job_id}", params={"wait": f"{max(remaining, 0):.3f}"},
                                     timeout=max(remaining, 0) + self.timeout)
            if job["status"] in models.TERMINAL:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise ClientError(f"job {job_id} did not end within {timeout} s", status=0, code="timeout")

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's result once it finished; JobFailed if it failed or was aborted."""
        job = await self.wait(job_id, timeout)
        if job["status"] != models.FINISHED:
            error = job.get("error") or {}
            raise JobFailed(f"job {job_id} {job['status']}: {error.get('type')}: {error.get('message')}", job=job_id)
        return job["result"]

    async def abort(self, job_id: str) -> dict[str, Any]:
        return await self.request("POST", f"api/v1/jobs/{job_id}/abort")

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

    async def health(self) -> dict[str, Any]:
        return await self.request("GET", "api/v1/health")


class SyncClient:
    """The same calls as :class:`Client`, blocking; runs its own event loop in a thread."""

    def __init__(self, endpoint_url: str = DEFAULT_URL, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
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
