"""A DNS/HTTP server that never answers: for tests of how providers report a dead server."""

from __future__ import annotations

import asyncio
import threading

from gtm.testing.ports import free_port


class SilentServer:
    """TCP that accepts and closes at once, UDP that reads and never answers, on one port, in a
    thread of its own (``gtm apply`` runs its own event loop in the test's thread).

    Attributes:
        port: the port (TCP and UDP) on 127.0.0.1.
        accepted: TCP connections accepted (and closed) so far.
        datagrams: UDP datagrams received (never answered).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.accepted = 0
        self.datagrams = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        server = self

        async def close_at_once(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            server.accepted += 1
            writer.close()

        class Mute(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
                server.datagrams += 1

        self._stop = asyncio.Event()
        tcp = await asyncio.start_server(close_at_once, "127.0.0.1", self.port)
        udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(Mute, local_addr=("127.0.0.1", self.port))
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            udp.close()
            tcp.close()
            await tcp.wait_closed()

    def __enter__(self) -> SilentServer:
        self._thread.start()
        assert self._ready.wait(5), "the silent server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)
        self._loop.close()
