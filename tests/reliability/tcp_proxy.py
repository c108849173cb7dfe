"""A TCP proxy on 127.0.0.1 that loses Export answers after the receiver has committed.

Bytes cannot simply be left out of an HTTP/2 stream (the connection would be corrupt), so a lost
answer is a lost connection, which is what a sender sees when a network path or a load balancer
dies between the receiver's commit and its ack: when the receiver starts answering one of the
selected requests, the proxy drops that answer and resets the client's connection; the sender
gets UNAVAILABLE and re-sends data that is already stored.

- `h2` (gRPC): the receiver's frames are parsed; an answer starts with the first HEADERS frame on
  a request stream. The receiver sends it only when its handler returns, i.e. after COMMIT
  (connection-level frames such as SETTINGS, PING and WINDOW_UPDATE are passed on untouched).
- `http1` (OTLP/HTTP, one request per connection): the first byte from the receiver starts the
  answer.

Every `drop_every`-th answer is dropped (2 % for 50), counted over all connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Literal

_FRAME_HEADER = 9
_HEADERS = 0x1


class ResponseDroppingProxy:
    def __init__(
        self, target_port: int, protocol: Literal["h2", "http1"] = "h2", drop_every: int = 50
    ) -> None:
        self._target_port = target_port
        self._protocol = protocol
        self._drop_every = drop_every
        self.responses = 0  # answers the receiver started
        self.dropped = 0  # of which the client never saw
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.BaseTransport] = set()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tcp-proxy", daemon=True
        )
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        # Ending the connections (rather than cancelling their tasks) lets each relay finish.
        for transport in list(self._transports):
            transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)

    def _answer_started(self) -> bool:
        """Count an answer; True if it is to be dropped."""
        self.responses += 1
        drop = self.responses % self._drop_every == self._drop_every // 2
        self.dropped += drop
        return drop

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            client_w.transport.abort()
            self._connections.discard(task)
            return
        self._transports |= {client_w.transport, server_w.transport}
        upstream = asyncio.create_task(self._pump(client_r, server_w))
        dropped = False
        try:
            relay = self._relay_h2_answers if self._protocol == "h2" else self._relay_http1_answer
            dropped = await relay(server_r, client_w)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            upstream.cancel()
            with contextlib.suppress(BaseException):
                await upstream
            if dropped:
                # abort (RST), not close: the client must see a dead connection, not a clean end.
                client_w.transport.abort()
            else:
                client_w.close()
            server_w.transport.abort()
            self._transports -= {client_w.transport, server_w.transport}
            self._connections.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    async def _relay_h2_answers(
        self, server_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> bool:
        answered: set[int] = set()  # streams whose answer has started (trailers are HEADERS too)
        while True:
            header = await server_r.readexactly(_FRAME_HEADER)
            length = int.from_bytes(header[:3], "big")
            frame_type, stream = header[3], int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            payload = await server_r.readexactly(length)
            if frame_type == _HEADERS and stream and stream not in answered:
                answered.add(stream)
                if self._answer_started():
                    return True
            client_w.write(header + payload)
            await client_w.drain()

    async def _relay_http1_answer(
        self, server_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> bool:
        data = await server_r.read(65536)
        if data and self._answer_started():
            return True
        while data:
            client_w.write(data)
            await client_w.drain()
            data = await server_r.read(65536)
        return False
