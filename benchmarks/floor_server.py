"""The floor: a bare aiohttp handler that reads the body and returns a prebuilt reply.

It does the work no extender can avoid (HTTP, reading the request, writing a reply of the same
size) and nothing else, so ``extender time / floor time`` is what our own work costs.

    python benchmarks/floor_server.py PORT REPLY_FILE [REPLY_FILE ...]

Each reply file serves ``POST /<file stem>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application(client_max_size=1 << 30)
    for name in sys.argv[2:]:
        reply = Path(name).read_bytes()

        async def handler(request: web.Request, reply: bytes = reply) -> web.Response:
            await request.read()
            return web.Response(body=reply, content_type="application/json")

        app.router.add_post(f"/{Path(name).stem}", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
