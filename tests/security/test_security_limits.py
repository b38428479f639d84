"""Origins, limits, strict queues, secrets kept out of logs, safe defaults and TLS."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import pytest
from support.procs import env, free_port, start_dispatcher, start_worker
from support.server import Server

from tqueues import Client
from tqueues.dispatcher import LIMITER, auth

Start = Callable[..., Awaitable[Server]]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# ---------------------------------------------------------------------------- origins

async def test_a_websocket_from_a_foreign_origin_is_refused_before_upgrading(start_server: Start) -> None:
    server = await start_server(allowed_domains=["a.example"])
    async with aiohttp.ClientSession() as session:
        for path in ("api/v1/events", "ws?queue=q"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await session.ws_connect(server.url + path, headers={"Origin": "https://evil.example"})
            assert caught.value.status == 403
        # listed origins, the dispatcher's own page, and non-browser clients (no Origin) are fine
        for headers in ({"Origin": "https://a.example"}, {"Origin": server.url.rstrip("/")}, {}):
            ws = await session.ws_connect(server.url + "api/v1/events", headers=headers)
            await ws.close()


async def test_cors_names_listed_origins_with_credentials_and_never_a_wildcard_with_them(start_server: Start) -> None:
    server = await start_server(allowed_domains=["a.example", "b.example"])
    async with server.session.options(server.url + "api/v1/jobs", headers={
            "Origin": "https://a.example", "Access-Control-Request-Method": "POST"}) as preflight:
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://a.example"
    async with server.session.get(server.url + "api/v1/queues", headers={"Origin": "https://evil.example"}) as response:
        assert "Access-Control-Allow-Origin" not in response.headers
    open_server = await start_server(allowed_domains=["*"])
    async with open_server.session.get(open_server.url + "api/v1/queues", headers={"Origin": "https://x.example"}) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers


# ---------------------------------------------------------------------------- limits

async def test_body_and_json_limits_answer_413_and_400(start_server: Start) -> None:
    server = await start_server(max_body=4096)
    status, body = await server.call("POST", "/api/v1/jobs", data=b"[" + b"1," * 5000 + b"1]",
                                     headers={"Content-Type": "application/json"})
    assert status == 413 and body["error"]["code"]
    status, body = await server.call("POST", "/api/v1/jobs", data=b"[" * 2000 + b"]" * 2000,
                                     headers={"Content-Type": "application/json"})
    assert status == 400
    status, body = await server.call("POST", "/api/v1/jobs", json={"queue": "q", "method": "m:f", "args": [[[[[[[[1]]]]]]]]})
    assert status == 201


async def test_a_flood_gets_429_with_retry_after_and_the_limiter_stays_bounded(start_server: Start) -> None:
    server = await start_server(auth=True, rate_limit=20, rate_burst=20)
    value, _ = await auth.create_token(server.store, ["read"])
    statuses = []
    for _ in range(60):
        async with server.session.get(server.url + "api/v1/queues", headers=bearer(value)) as response:
            statuses.append(response.status)
            if response.status == 429:
                assert int(response.headers["Retry-After"]) >= 1
                assert (await response.json())["error"]["code"] == "rate_limited"
    assert statuses[:15] == [200] * 15 and statuses.count(429) >= 30
    limiter = server.app[LIMITER]
    for i in range(auth.MAX_RATE_KEYS + 500):
        limiter.check(f"key{i}")
    assert len(limiter) <= auth.MAX_RATE_KEYS


# ---------------------------------------------------------------------------- strict queues

async def test_a_strict_queue_refuses_methods_no_worker_registered(start_server: Start) -> None:
    server = await start_server()
    await server.call("PUT", "/api/v1/queues/strictq", json={"strict": True})
    for method in ("os:system", "subprocess:check_output", "builtins:eval", "app.jobs:unknown"):
        status, body = await server.call("POST", "/api/v1/jobs", json={"queue": "strictq", "method": method, "args": ["id"]})
        assert status == 422 and body["error"]["code"] == "method_not_registered", (method, body)
    status, body = await server.call("POST", "/", json={"queue": "strictq", "method": "os:system"})
    assert status == 422
    # once a live worker of that queue registers a function, it is accepted (either spelling)
    await server.call("POST", "/api/v1/workers", json={"id": "w", "queues": ["strictq"], "functions": ["app.jobs:ok"]})
    assert (await server.call("POST", "/api/v1/jobs", json={"queue": "strictq", "method": "app.jobs:ok"}))[0] == 201
    assert (await server.call("POST", "/api/v1/jobs", json={"queue": "strictq", "method": "app.jobs.ok"}))[0] == 201
    assert (await server.call("POST", "/api/v1/jobs", json={"queue": "elsewhere", "method": "os:system"}))[0] == 201
    status, jobs = await server.call("GET", "/api/v1/jobs?queue=strictq")
    assert {j["method"] for j in jobs["jobs"]} == {"app.jobs:ok", "app.jobs.ok"}


async def test_a_dangerous_job_written_straight_into_the_database_still_runs_nothing(tmp_path: Path, db_url: str) -> None:
    from tqueues import models
    from tqueues.store import open_store

    canary = tmp_path / "ran"
    store = open_store(db_url)
    await store.open()
    try:
        jobs = [models.NewJob(queue="raw", method=m, args=a, max_attempts=1) for m, a in (
            ("os:system", [f"touch {canary}"]), ("subprocess:check_output", [["touch", str(canary)]]),
            ("builtins:eval", [f"open({str(canary)!r}, 'w')"]))]
        ids = [job["id"] for job, _ in await store.enqueue(jobs)]
    finally:
        await store.close()
    proc, url = start_dispatcher(tmp_path, db_url)
    worker = start_worker(tmp_path, url, "raw")
    try:
        async with Client(url) as client:
            done = [await client.wait(i, timeout=30) for i in ids]
        assert [(d["status"], d["error"]["type"]) for d in done] == [("failed", "NotRegistered")] * 3
        assert not canary.exists()
    finally:
        worker.close()
        proc.close()


# ---------------------------------------------------------------------------- secrets stay out of logs

async def test_with_debug_logging_canary_secrets_appear_nowhere_in_the_logs(tmp_path: Path, pg_url: str) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from tqueues.store import open_store

    dsn_secret, kwarg_secret = "CANARY-DSN-PASSWORD-7f3a", "CANARY-KWARG-9b1c"
    parts = urlsplit(pg_url)   # the test server trusts connections, so any password is accepted
    dsn = urlunsplit(parts._replace(netloc=f"{parts.username}:{dsn_secret}@{parts.hostname}:{parts.port}"))
    store = open_store(dsn)
    await store.open()
    try:
        admin, _ = await auth.create_token(store, ["admin"])
        worker_token, _ = await auth.create_token(store, ["work"])
    finally:
        await store.close()
    proc, url = start_dispatcher(tmp_path, dsn, "--auth", "--loglevel", "DEBUG", "--access-log")
    worker = start_worker(tmp_path, url, "secret", "--token", worker_token, "--loglevel", "DEBUG")
    try:
        async with Client(url, token=admin) as client:
            job = await client.request("POST", "api/v1/jobs", json={
                "queue": "secret", "method": "support.jobs:echo", "kwargs": {"password": kwarg_secret}, "secrets": ["password"]})
            done = await client.wait(job["id"], timeout=30)
            assert done["status"] == "finished" and done["kwargs"]["password"] == "***"
            # a failing request with a wrong token must not echo it either
            async with aiohttp.ClientSession() as session:
                async with session.get(url + "api/v1/queues", headers=bearer(admin + "x")) as response:
                    assert response.status == 401 and admin not in await response.text()
    finally:
        worker.terminate()
        proc.terminate()
        logs = worker.output() + proc.output()
        worker.close()
        proc.close()
    # Debug logging really was on, in both processes, and the dispatcher's names the store's URL
    # with its password masked
    assert "DEBUG tqueues.worker: <Job " in logs
    assert f"DEBUG tqueues.dispatcher: store postgresql://{parts.username}:***@" in logs
    for canary in (dsn_secret, kwarg_secret, admin, worker_token, worker_token.split("_", 2)[-1]):   # tq_<id>_<secret>
        assert canary not in logs


# ---------------------------------------------------------------------------- safe defaults, TLS

def run_dispatcher(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tqueues.cli.dispatcher", *args], capture_output=True, text=True,
                          timeout=30, env=env())


def test_without_auth_the_dispatcher_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    result = run_dispatcher("--db", f"sqlite:///{tmp_path / 'x.db'}", "--bind", f"0.0.0.0:{free_port()}")
    assert result.returncode == 2 and "--auth" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = tmp / "cert.pem", tmp / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


async def test_tls_serves_https_and_workers_verify_it(tmp_path: Path) -> None:
    from support.procs import Proc

    certfile, keyfile = self_signed(tmp_path)
    port = free_port()
    proc = Proc([sys.executable, "-m", "tqueues.cli.dispatcher", "--db", f"sqlite:///{tmp_path / 't.db'}",
                 "--bind", f"127.0.0.1:{port}", "--certfile", str(certfile), "--keyfile", str(keyfile)], tmp_path / "d.log")
    url = f"https://127.0.0.1:{port}/"
    worker = None
    try:
        context = ssl.create_default_context(cafile=str(certfile))
        for _ in range(100):
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(url + "api/v1/health", ssl=context) as response:
                        if response.status == 200:
                            break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        worker = start_worker(tmp_path, url, "tls", "--cafile", str(certfile))
        async with Client(url, cafile=str(certfile)) as client:
            job = await client.enqueue("support.jobs:add_plain", 2, 2, queue="tls")
            assert (await client.wait(job["id"], timeout=30))["result"] == 4
        async with aiohttp.ClientSession() as session:   # without the CA, verification fails
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(url + "api/v1/health")
    finally:
        if worker is not None:
            worker.close()
        proc.close()
