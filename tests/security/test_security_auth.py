"""Authentication and authorisation over real HTTP: every route, tokens, JWTs, scopes, queues."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.server import Server

from tqueues.dispatcher import auth, channel, compat, views

Start = Callable[..., Awaitable[Server]]


def rsa_pair(tmp: Path, name: str = "key") -> tuple[bytes, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp / f"{name}.pub.pem"
    path.write_bytes(public)
    return private, path


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "ci", "aud": "tqueues", "exp": int(time.time()) + 300, "scope": "admin", **extra}


@pytest.fixture
async def secured(start_server: Start, tmp_path: Path) -> tuple[Server, bytes, Path]:
    private, public = rsa_pair(tmp_path)
    server = await start_server(auth=True, jwt_public_key=str(public))
    return server, private, public


async def token(server: Server, *scopes: str, queues: tuple[str, ...] = ("*",), methods: tuple[str, ...] = ("*",)) -> str:
    value, _ = await auth.create_token(server.store, scopes, queues, methods)
    return value


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def all_routes() -> list[tuple[str, str]]:
    return [(m, p) for m, p, _ in (*views.ROUTES, *compat.ROUTES, *channel.ROUTES)]


def concrete(path: str) -> str:
    return path.replace("{id}", "f" * 32).replace("{name}", "q")


# ---------------------------------------------------------------------------- 401 on every route

async def bad_credentials(server: Server, private: bytes, public: Path) -> dict[str, dict[str, str]]:
    revoked = await token(server, "admin")
    await server.store.revoke_token(auth.token_id_of(revoked) or "")
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    hs_header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    hs_sig = b64(hmac.new(public.read_bytes(), f"{hs_header}.{payload}".encode(), hashlib.sha256).digest())
    other_private, _ = rsa_pair(public.parent, "other")
    return {
        "no token": {},
        "not bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
        "wrong token": bearer("tq_0123456789ab_notthesecretatall"),
        "garbage": bearer("x" * 40),
        "revoked token": bearer(revoked),
        "expired JWT": bearer(jwt.encode(claims(exp=int(time.time()) - 10), private, algorithm="RS256")),
        "JWT for another audience": bearer(jwt.encode(claims(aud="elsewhere"), private, algorithm="RS256")),
        "JWT without exp": bearer(jwt.encode({"sub": "x", "aud": "tqueues", "scope": "admin"}, private, algorithm="RS256")),
        "JWT with a bad signature": bearer(jwt.encode(claims(), other_private, algorithm="RS256")),
        "JWT alg=none": bearer(f"{header}.{payload}."),
        "JWT HS256 signed with the public key": bearer(f"{hs_header}.{payload}.{hs_sig}"),
        "JWT naming no scope": bearer(jwt.encode(claims(scope="root"), private, algorithm="RS256")),
    }


async def test_given_auth_when_any_route_is_called_with_bad_credentials_then_401_and_nothing_leaks(secured: Any) -> None:
    server, private, public = secured
    creds = await bad_credentials(server, private, public)
    for method, path in all_routes():
        if path == "/api/v1/health":
            continue
        for name, headers in creds.items():
            url = concrete(path) + ("?queue=q&id=x" if path in ("/", "/ws") else "")
            status, body = await server.call(method, url, headers=headers, json={})
            assert status == 401, (method, path, name, body)
            assert body["error"]["code"] == "unauthorized", (method, path, name)
            text = json.dumps(body)
            secret = headers.get("Authorization", "").partition(" ")[2]
            assert not secret or secret not in text, (method, path, name)


async def test_given_auth_when_a_websocket_handshake_has_bad_credentials_then_it_is_refused_with_401(secured: Any) -> None:
    server, private, public = secured
    creds = await bad_credentials(server, private, public)
    async with aiohttp.ClientSession() as session:
        for name, headers in creds.items():
            for path in ("api/v1/events", "ws?queue=q"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                    await session.ws_connect(server.url + path, headers=headers)
                assert caught.value.status == 401, (path, name)
        # a token in the query works for websockets only, as browsers cannot set headers there
        good = await token(server, "read")
        ws = await session.ws_connect(server.url + f"api/v1/events?token={good}")
        await ws.close()
        status, _ = await server.call("GET", f"/api/v1/queues?token={good}")
        assert status == 401


async def test_given_auth_then_the_health_check_stays_open_and_valid_tokens_and_jwts_work(secured: Any) -> None:
    server, private, _ = secured
    assert (await server.call("GET", "/api/v1/health"))[0] == 200
    good = await token(server, "read")
    assert (await server.call("GET", "/api/v1/queues", headers=bearer(good)))[0] == 200
    signed = jwt.encode(claims(scope="read submit", queues=["jq"]), private, algorithm="RS256")
    status, job = await server.call("POST", "/api/v1/jobs", headers=bearer(signed), json={"queue": "jq", "method": "m:f"})
    assert status == 201
    assert (await server.call("POST", "/api/v1/jobs", headers=bearer(signed), json={"queue": "other", "method": "m:f"}))[0] == 403


# ---------------------------------------------------------------------------- 403: scopes and queues

async def test_given_a_token_without_the_scope_then_403(secured: Any) -> None:
    server, _, _ = secured
    reader = await token(server, "read")
    submitter = await token(server, "submit")
    cases = [(reader, "POST", "/api/v1/jobs", {"queue": "q", "method": "m:f"}),
             (reader, "POST", "/api/v1/claim", {"queue": "q"}),
             (reader, "POST", "/api/v1/queues/q/pause", None),
             (submitter, "POST", "/api/v1/claim", {"queue": "q"}),
             (submitter, "GET", "/api/v1/workers", None),
             (submitter, "POST", "/api/v1/prune", {"older_than": 0}),
             (submitter, "GET", "/api/v1/tokens", None),
             (reader, "POST", "/api/v1/tokens", {"scopes": ["admin"]})]
    for value, method, path, body in cases:
        status, answer = await server.call(method, path, headers=bearer(value), json=body)
        assert status == 403 and answer["error"]["code"] == "forbidden", (method, path, answer)


async def test_given_a_submit_token_for_queue_a_then_queue_b_is_out_of_reach(secured: Any) -> None:
    server, _, _ = secured
    admin = await token(server, "admin")
    a_only = await token(server, "submit", queues=("a",))
    status, mine = await server.call("POST", "/api/v1/jobs", headers=bearer(a_only), json={"queue": "a", "method": "m:f"})
    assert status == 201
    status, theirs = await server.call("POST", "/api/v1/jobs", headers=bearer(admin), json={"queue": "b", "method": "m:f"})
    assert status == 201
    forbidden = [("POST", "/api/v1/jobs", {"queue": "b", "method": "m:f"}),
                 ("POST", "/api/v1/jobs", [{"queue": "a", "method": "m:f"}, {"queue": "b", "method": "m:f"}]),
                 ("GET", f"/api/v1/jobs/{theirs['id']}", None),
                 ("GET", f"/api/v1/jobs/{theirs['id']}/logs", None),
                 ("GET", f"/api/v1/jobs/{theirs['id']}/executions", None),
                 ("GET", "/api/v1/jobs?queue=b", None),
                 ("GET", "/api/v1/jobs", None),
                 ("GET", "/api/v1/events?queue=b", None),
                 ("GET", f"/api/v1/events?job={theirs['id']}", None),
                 ("GET", "/api/v1/events", None)]
    for method, path, body in forbidden:
        status, answer = await server.call(method, path, headers=bearer(a_only), json=body)
        assert status == 403, (method, path, answer)
    assert (await server.call("GET", f"/api/v1/jobs/{mine['id']}", headers=bearer(a_only)))[0] == 200
    assert (await server.call("GET", "/api/v1/jobs?queue=a", headers=bearer(a_only)))[0] == 200
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(server.url + "api/v1/events?queue=b", headers=bearer(a_only))
        assert caught.value.status == 403
        ws = await session.ws_connect(server.url + "api/v1/events?queue=a", headers=bearer(a_only))
        await ws.close()
    # and nothing was enqueued to b by the refused batch
    status, listed = await server.call("GET", "/api/v1/jobs?queue=b", headers=bearer(admin))
    assert [j["id"] for j in listed["jobs"]] == [theirs["id"]]


async def test_given_a_token_limited_to_methods_then_others_are_refused(secured: Any) -> None:
    server, _, _ = secured
    limited = await token(server, "submit", methods=("app.safe:*",))
    ok = await server.call("POST", "/api/v1/jobs", headers=bearer(limited), json={"queue": "q", "method": "app.safe:run"})
    assert ok[0] == 201
    no = await server.call("POST", "/api/v1/jobs", headers=bearer(limited), json={"queue": "q", "method": "os:system"})
    assert no[0] == 403


async def test_given_two_work_tokens_then_one_cannot_touch_the_others_lease(secured: Any) -> None:
    server, _, _ = secured
    admin, one, two = await token(server, "admin"), await token(server, "work"), await token(server, "work")
    status, job = await server.call("POST", "/api/v1/jobs", headers=bearer(admin), json={"queue": "q", "method": "m:f"})
    status, claimed = await server.call("POST", "/api/v1/claim", headers=bearer(one), json={"queue": "q"})
    lease = claimed["jobs"][0]["lease"]
    # Even knowing the lease, the other worker's token is refused on every fenced route
    for method, path, body in [("POST", f"/api/v1/jobs/{job['id']}/complete", {"lease": lease}),
                               ("POST", f"/api/v1/jobs/{job['id']}/fail", {"lease": lease}),
                               ("POST", f"/api/v1/jobs/{job['id']}/heartbeat", {"lease": lease}),
                               ("POST", f"/api/v1/jobs/{job['id']}/release", {"lease": lease}),
                               ("POST", "/api/v1/complete", {"outcomes": [{"id": job["id"], "lease": lease, "status": "finished"}]}),
                               ("POST", "/api/v1/heartbeat", {"leases": [{"id": job["id"], "lease": lease}]}),
                               ("POST", "/api/v1/logs", {"lines": [{"job_id": job["id"], "lease": lease, "stream": "stdout", "line": "x"}]}),
                               ("PATCH", f"/api/v1/jobs/{job['id']}", {"data": {"x": 1}, "lease": lease})]:
        status, answer = await server.call(method, path, headers=bearer(two), json=body)
        assert status == 403, (path, answer)
    assert (await server.store.get(job["id"]))["status"] == "started"
    # while its holder completes it
    status, done = await server.call("POST", f"/api/v1/jobs/{job['id']}/complete", headers=bearer(one), json={"lease": lease})
    assert status == 200 and done["status"] == "finished"


async def test_leases_and_secret_kwargs_are_shown_only_to_the_worker_holding_the_job(secured: Any) -> None:
    server, _, _ = secured
    admin, worker = await token(server, "admin"), await token(server, "work")
    status, job = await server.call("POST", "/api/v1/jobs", headers=bearer(admin), json={
        "queue": "q", "method": "m:f", "kwargs": {"password": "hunter2", "user": "bob"}, "secrets": ["password"]})
    assert job["kwargs"] == {"password": "***", "user": "bob"}
    status, claimed = await server.call("POST", "/api/v1/claim", headers=bearer(worker), json={"queue": "q"})
    (leased,) = claimed["jobs"]
    assert leased["kwargs"]["password"] == "hunter2" and leased["lease"]
    status, seen = await server.call("GET", f"/api/v1/jobs/{job['id']}", headers=bearer(admin))
    assert seen["kwargs"]["password"] == "***" and seen["lease"] is None
    status, events = await server.call("GET", "/api/v1/events?since=0", headers=bearer(admin))
    assert "hunter2" not in json.dumps(events) and leased["lease"] not in json.dumps(events)


async def test_tokens_are_managed_over_the_api_and_shown_once(secured: Any) -> None:
    server, _, _ = secured
    admin = await token(server, "admin")
    status, made = await server.call("POST", "/api/v1/tokens", headers=bearer(admin), json={"scopes": ["read"], "name": "ro"})
    assert status == 201 and made["token"].startswith("tq_") and "hash" not in made
    assert (await server.call("GET", "/api/v1/queues", headers=bearer(made["token"])))[0] == 200
    status, listed = await server.call("GET", "/api/v1/tokens", headers=bearer(admin))
    assert made["token"] not in json.dumps(listed) and all("hash" not in t for t in listed["tokens"])
    status, revoked = await server.call("DELETE", f"/api/v1/tokens/{made['id']}", headers=bearer(admin))
    assert status == 200 and revoked["revoked_at"] is not None
    await asyncio.sleep(auth.CACHE_SECONDS + 0.05)
    assert (await server.call("GET", "/api/v1/queues", headers=bearer(made["token"])))[0] == 401


async def test_tokens_can_be_given_in_a_file(start_server: Start, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps([{"token": "file-token-for-the-ci-runner", "scopes": ["read"], "name": "ci"}]))
    server = await start_server(auth=True, tokens_file=str(path))
    assert (await server.call("GET", "/api/v1/queues", headers=bearer("file-token-for-the-ci-runner")))[0] == 200
    assert (await server.call("POST", "/api/v1/claim", headers=bearer("file-token-for-the-ci-runner"), json={"queue": "q"}))[0] == 403
