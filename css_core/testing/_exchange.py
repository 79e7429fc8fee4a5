"""One client connection of the double: h11's state machine over asyncio streams.

h11 does the HTTP/1.1 framing (keep-alive, chunked bodies) exactly; the double decides
only what to answer, so a client under test meets real HTTP, not a hand-rolled imitation.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import h11

__all__ = ("Exchange",)

_Header = tuple[bytes, bytes]


class Exchange:
    """One client connection: the h11 state machine and the socket's streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conn, self.reader, self.writer = h11.Connection(h11.SERVER), reader, writer

    async def next_event(self) -> Any:
        while (event := self.conn.next_event()) is h11.NEED_DATA:
            self.conn.receive_data(await self.reader.read(65536))  # b"" tells h11 about EOF
        return event

    async def read_request(self) -> tuple[h11.Request, bytes] | None:
        """The next request and its body; None when the client closed the connection."""
        request = await self.next_event()
        if not isinstance(request, h11.Request):
            return None  # the client closed an idle keep-alive connection
        body = bytearray()
        while isinstance(event := await self.next_event(), h11.Data):
            body += event.data
        return (request, bytes(body)) if isinstance(event, h11.EndOfMessage) else None

    async def send(self, *events: Any) -> None:
        for event in events:
            data = self.conn.send(event)
            if data:
                self.writer.write(data)
        await self.writer.drain()

    async def send_body(self, status: int, body: bytes, *extra: _Header, reason: bytes = b"",
                        cut: bool = False) -> None:
        """Send a JSON answer; `cut`: only half its body (the caller then closes)."""
        head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        response = h11.Response(status_code=status, headers=[*head, *extra], reason=reason)
        if cut:
            await self.send(response, h11.Data(data=body[: len(body) // 2]))
        else:
            await self.send(response, h11.Data(data=body), h11.EndOfMessage())

    def abort(self) -> None:
        """Close the connection with a TCP RST (SO_LINGER 0) instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()
