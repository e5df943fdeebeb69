"""A trivial HTTP/1.1 server: reads a request, answers a fixed small JSON. Nothing else.

The load generator's own ceiling is measured against it: whatever rate the client reaches
here is the most it can drive on this machine, with the server's cost near zero (it parses
only the request line's end and ``Content-Length``). Run as
``python -m loadlib.trivial_server PORT``; it binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n"
    b'{"predictions":[]}'
)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            assert self.transport is not None
            self.transport.write(RESPONSE)


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until killed."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Connection, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> int:
    port = int(sys.argv[1])
    try:
        import uvloop

        uvloop.run(serve(port))
    except ImportError:
        asyncio.run(serve(port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
