"""A client that reads a stream slowly holds the provider's answer back: the service buffers
a bounded amount for it, never the whole answer. The service runs by its command line (one
worker), so its memory is its own; the client is a raw socket with a small receive buffer."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import h11

from css_core.testing import ProviderDouble
from tests.conftest import STREAM, Launched, chat, job, service_env

EVENTS, EVENT_TEXT = 400, 100_000  # a 40 MB answer: more than the kernel's socket buffers hold


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_slow_client_holds_the_provider_back_and_loses_nothing(
    double: ProviderDouble, launch: Callable[..., Launched]
) -> None:
    service = launch(service_env(double), workers=1)
    pid, port = service.process.pid, int(service.url.rsplit(":", 1)[1])
    double.reply = "".join(chr(ord("a") + i % 26) * EVENT_TEXT for i in range(EVENTS))
    double.stream_chunks = EVENTS
    body = json.dumps(job(chat("big"), destination=STREAM)).encode()
    before = rss_bytes(pid)

    client = h11.Connection(h11.CLIENT)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.connect(("127.0.0.1", port))
        head = [("host", "test"), ("content-type", "application/json"), ("content-length", str(len(body))),
                ("connection", "close")]
        sock.sendall(client.send(h11.Request(method="POST", target="/service_output", headers=head)))
        sock.sendall(client.send(h11.Data(data=body)) + client.send(h11.EndOfMessage()))
        client.receive_data(sock.recv(4096))
        assert client.next_event().status_code == 200  # type: ignore[union-attr]

        # the client stops reading: the provider must be held back, the service's memory bounded
        double.wait_for_requests(1)
        time.sleep(2)
        assert double.streams == [], "the provider sent the whole answer while the client read nothing"
        grown = rss_bytes(pid) - before
        assert grown < 16 * 2**20, f"the service buffered {grown / 2**20:.1f} MB for a client that reads nothing"

        received = bytearray()
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(sock.recv(1 << 20))
            elif isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
    assert received.decode() == double.reply  # all of it, in order
    assert double.wait_for_streams(1) == ["completed"]
