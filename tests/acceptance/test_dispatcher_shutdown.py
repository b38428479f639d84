"""A dispatcher asked to stop (SIGTERM) exits at once, even with websockets and long polls open."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from acceptance.conftest import Cluster


async def test_given_open_websockets_and_long_polls_when_the_dispatcher_gets_sigterm_then_it_exits_promptly(
        cluster: Cluster) -> None:
    # Given a dispatcher with a websocket subscriber, a producer's open enqueue websocket, a
    # claim long-polling for 30 s and a job being waited on for 30 s
    url = cluster.start_dispatcher()
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url + "api/v1/events")
        producer = await session.ws_connect(url + "api/v1/enqueue")
        await producer.send_json({"ref": 1, "job": {"queue": "idle", "method": "m:f"}})
        job = (await producer.receive_json(timeout=5))["job"]
        claim = asyncio.ensure_future(session.post(url + "api/v1/claim",
                                                   json={"queues": ["empty"], "worker": "w", "wait": 30}))
        wait = asyncio.ensure_future(session.get(url + f"api/v1/jobs/{job['id']}?wait=30"))
        await asyncio.sleep(0.5)

        # When it is sent SIGTERM
        assert cluster.dispatcher is not None
        started = time.monotonic()
        cluster.dispatcher.popen.terminate()
        code = await asyncio.to_thread(cluster.dispatcher.popen.wait, 20)
        took = time.monotonic() - started

        # Then it exits cleanly well before the long polls would have ended, the websocket
        # is closed with 1001 "going away", and the long polls got answers
        assert code == 0, cluster.dispatcher.output()[-2000:]
        assert took < 10, f"took {took:.1f} s"
        kinds = []
        while (message := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
            kinds.append(message.json()["kind"])
        assert kinds == ["job.created"]
        # (read after the process is gone: the close frame is in the buffer; the client's own
        # close reply then fails, so ws.close_code would say 1006)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1001, message
        closing = await producer.receive(timeout=5)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1001, closing
        claimed = await claim
        assert claimed.status == 200 and (await claimed.json())["jobs"] == []
        waited = await wait
        assert waited.status == 200 and (await waited.json())["status"] == "pending"
