"""The dashboard's files over real HTTP: where they are served, how, and that they are public
while every API call the page makes is not."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from support.server import Server

from tqueues.dispatcher import auth


async def test_given_a_browser_at_the_root_then_it_is_sent_to_the_dashboard_and_api_clients_are_not(
        server: Server) -> None:
    # Given a dispatcher; when a browser asks for / (HTML), it is redirected to /ui/
    async with server.session.get(server.url, headers={"Accept": "text/html,*/*"}, allow_redirects=False) as response:
        assert response.status == 302 and response.headers["Location"] == "/ui/"
    # and a TQueues client asking for / without a queue still gets its JSON 400
    status, body = await server.call("GET", "/")
    assert status == 400 and body["error"]["code"] == "invalid_request"


async def test_given_the_dashboard_files_then_they_are_served_with_types_etags_and_a_strict_policy(
        server: Server) -> None:
    for path, kind in (("ui/", "text/html"), ("ui/app.js", "text/javascript"), ("ui/app.css", "text/css")):
        async with server.session.get(server.url + path) as response:
            body = await response.read()
            assert response.status == 200 and response.content_type == kind, path
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            etag = response.headers["ETag"]
            assert body
        # unchanged files are not sent again
        async with server.session.get(server.url + path, headers={"If-None-Match": etag}) as response:
            assert response.status == 304
    # nothing is loaded from elsewhere: no http(s) URL in the page or its code
    for path in ("ui/", "ui/app.js", "ui/app.css"):
        async with server.session.get(server.url + path) as response:
            text = await response.text()
            assert "http://" not in text and "https://" not in text, path
    async with server.session.get(server.url + "ui/../app.py") as response:
        assert response.status == 404
    status, body = await server.call("GET", "/ui/nothing.js")
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_given_auth_then_the_files_are_public_and_me_tells_a_token_its_scopes(
        start_server: Callable[..., Awaitable[Server]]) -> None:
    server = await start_server(auth=True)
    token, _ = await auth.create_token(server.store, ["read"], ["mail-*"], ["app:*"], name="viewer")

    async with server.session.get(server.url + "ui/") as response:
        assert response.status == 200
    status, body = await server.call("GET", "/api/v1/me")
    assert status == 401
    async with server.session.get(server.url + "api/v1/me", headers={"Authorization": f"Bearer {token}"}) as response:
        me: dict[str, Any] = await response.json()
    assert me == {"auth": True, "kind": "token", "id": auth.token_id_of(token), "scopes": ["read"],
                  "queues": ["mail-*"], "methods": ["app:*"]}
    assert token not in str(me)
