"""A listening socket shared by worker processes, with connections spread among them.

Every worker waits on the same socket the supervisor bound, and the kernel wakes
them all for each new connection. An event loop that wins that race accepts
every pending connection at once, so a burst of keep-alive clients (a load
balancer, a busy ACME client pool) can end up on one worker while the others
idle. Here a worker first waits a moment that grows with the connections it
already serves, so the least loaded worker takes the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from aiohttp import web

logger = logging.getLogger(__name__)

#: How much later a worker reaches for a new connection per connection it holds.
DEFER_PER_CONNECTION = 0.0005
#: The longest a worker defers; past it, whichever worker wakes first takes it.
DEFER_LIMIT = 0.01
#: As long as aiohttp allows a TLS handshake on its own sites.
TLS_HANDSHAKE_TIMEOUT = 60.0


class SharedSocketSite(web.BaseSite):
    """A site on an inherited listening socket that defers accepting by its load."""

    __slots__ = ("_accepting", "_handshakes", "_sock")

    def __init__(
        self, runner: web.BaseRunner, sock: socket.socket, *, ssl_context: ssl.SSLContext | None
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sock = sock
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        host, port = self._sock.getsockname()[:2]
        return f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        self._sock.setblocking(False)
        self._accepting = asyncio.create_task(self._accept_forever())

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        for handshake in list(self._handshakes):
            handshake.cancel()
        await super().stop()

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        while True:
            await _readable(loop, self._sock)
            held = len(server.connections) + len(self._handshakes)
            if held:
                await asyncio.sleep(min(held * DEFER_PER_CONNECTION, DEFER_LIMIT))
            try:
                connection, _address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another worker took it
            except OSError as exc:
                # Out of descriptors, or the peer gave up: keep serving the rest.
                logger.warning("accepting a connection failed: %s", exc)
                await asyncio.sleep(DEFER_LIMIT)
                continue
            connection.setblocking(False)
            handshake = loop.create_task(self._serve(loop, server, connection))
            self._handshakes.add(handshake)
            handshake.add_done_callback(self._handshakes.discard)

    async def _serve(
        self, loop: asyncio.AbstractEventLoop, server: web.Server, connection: socket.socket
    ) -> None:
        """Hand the connection to aiohttp, after the TLS handshake on the HTTPS site."""
        try:
            await loop.connect_accepted_socket(
                server,
                connection,
                ssl=self._ssl_context,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if self._ssl_context else None,
            )
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            logger.debug("connection closed before it was served: %s", exc)
            connection.close()
        except asyncio.CancelledError:
            connection.close()
            raise


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Wait until ``sock`` has a connection to accept (or another worker's wake-up)."""
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), _set_once, ready)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
