"""The yardstick of scripts/bench: a bare aiohttp pass-through relay (no auth, no limits,
no billing) written the obvious way: a JSON answer is read whole and sent in one write
(as the gateway sends it), a stream is relayed chunk by chunk. The gateway's CPU per
request is compared to it."""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import uvloop
from aiohttp import web


def build(upstream: str, key: str, session: aiohttp.ClientSession) -> web.Server:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        headers = {
            "x-api-key": key,
            "anthropic-version": request.headers.get("anthropic-version", "2023-06-01"),
            "content-type": "application/json",
        }
        async with session.post(upstream + request.path, data=body, headers=headers) as up:
            content_type = up.headers["content-type"]
            if not content_type.startswith("text/event-stream"):  # JSON: one write
                return web.Response(
                    status=up.status, body=await up.read(), headers={"content-type": content_type}
                )
            response = web.StreamResponse(status=up.status, headers={"content-type": content_type})
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    return web.Server(handle, access_log=None)


async def main(port: int, upstream: str, key: str) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    runner = web.ServerRunner(build(upstream, key, session), handle_signals=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()  # until the process is signalled
    finally:
        await runner.cleanup()
        await session.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    uvloop.run(main(args.port, args.upstream, args.key))
