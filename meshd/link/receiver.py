"""Reading an established session's socket straight into its frame buffer.

The handshake runs over asyncio streams: simple, and its few hundred bytes do not
matter. A stream then moves megabytes per second, and ``StreamReader`` copies every
byte three times (socket into a new ``bytes``, that into its buffer, ``read()`` out
into another ``bytes``) before the frame buffer copies it a fourth time.
``SessionReceiver`` is an ``asyncio.BufferedProtocol``: the socket reads into the
free tail of the ``Connection``'s frame buffer (``receive_buffer``), and no byte is
copied until its frame is decrypted.

Taking over (``install``) happens right after a ``StreamReader.read()`` that emptied
the reader's buffer, with no await in between, so not a byte is left behind in it and
``at_eof()`` tells whether the peer had already hung up. The stream protocol keeps
handling the write side (``pause_writing``/``resume_writing``, and ``connection_lost``
for ``wait_closed``), so ``StreamWriter.drain()`` works as before.

Back-pressure: once ``HIGH_WATER`` bytes wait for the session's read loop (which may
be blocked handing a message to a busy handler), reading pauses until the loop asks
for more. ``HIGH_WATER`` exceeds the largest frame, so a paused buffer always holds a
complete frame the loop can take: it never waits for bytes it has stopped reading.
"""

from __future__ import annotations

import asyncio
from typing import Final

from meshd.link.connection import Connection
from meshd.link.errors import LinkError
from meshd.link.limits import LENGTH_PREFIX_SIZE, MAX_FRAME

# Most free space offered to one socket read: two default stream chunks. Measured
# against 256 KiB it cut the receiver's loop CPU per MiB by a quarter (fewer reads and
# wakeups). Space the buffer already has is offered up to READ_CHUNK; what it may grow
# by for one read (the offer) starts at MIN_READ and doubles while reads fill it,
# halving when they come back small, so an idle session does not grow a stream's buffer.
READ_CHUNK: Final = 1024 * 1024
MIN_READ: Final = 64 * 1024

# Received-but-unprocessed bytes at which reading pauses (see the module docstring).
# With the buffer's growth this bounds a session's receive buffer to a few MiB, about
# what StreamReader's limit allowed before.
HIGH_WATER: Final = LENGTH_PREFIX_SIZE + MAX_FRAME + READ_CHUNK


class SessionReceiver(asyncio.BufferedProtocol):
    """The read side of one established session's transport."""

    def __init__(
        self,
        conn: Connection,
        transport: asyncio.Transport,
        streams: asyncio.Protocol,
    ) -> None:
        self._conn = conn
        self._transport = transport
        self._streams = streams  # the StreamReaderProtocol: write flow control, closing
        self._wakeup = asyncio.Event()
        self._fresh = False  # bytes arrived since the read loop last looked
        self._eof = False
        self._lost = False
        self._error: Exception | None = None
        self._paused = False
        self._sink: bytearray | None = None  # after the connection broke: drop bytes
        self._offer = MIN_READ  # free space offered to the next read

    @classmethod
    def install(cls, conn: Connection, writer: asyncio.StreamWriter) -> SessionReceiver:
        """Point ``writer``'s transport at a new receiver; call only right after a
        ``StreamReader.read()`` that left the reader empty (see the module docstring)."""
        transport = writer.transport
        if not isinstance(transport, asyncio.Transport):
            raise TypeError("a session needs a full-duplex transport")
        streams = transport.get_protocol()
        if not isinstance(streams, asyncio.Protocol):
            raise TypeError("expected the transport of an asyncio stream")
        receiver = cls(conn, transport, streams)
        transport.set_protocol(receiver)
        return receiver

    # -- asyncio.BufferedProtocol -------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._sink is None:
            try:
                # Room the buffer already has is offered up to READ_CHUNK; it grows
                # only by the adaptive offer.
                return self._conn.receive_buffer(self._offer, READ_CHUNK)
            except LinkError:  # the Connection broke: the session is ending
                self._sink = bytearray(READ_CHUNK)
        return memoryview(self._sink)

    def buffer_updated(self, nbytes: int) -> None:
        if self._sink is not None or nbytes == 0:
            return  # the session is over: nobody will read these bytes
        self._conn.receive_committed(nbytes)
        if nbytes >= self._offer:  # reads keep up with the offer: let it grow
            self._offer = min(2 * self._offer, READ_CHUNK)
        elif nbytes < self._offer // 4:
            self._offer = max(self._offer // 2, MIN_READ)
        self._fresh = True
        if not self._paused and self._conn.buffered >= HIGH_WATER:
            self._paused = True
            self._transport.pause_reading()
        self._wakeup.set()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wakeup.set()
        return self._streams.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._error = exc
        self._wakeup.set()
        self._streams.connection_lost(exc)

    def pause_writing(self) -> None:
        self._streams.pause_writing()

    def resume_writing(self) -> None:
        self._streams.resume_writing()

    # -- the session's read loop ---------------------------------------------------------

    async def wait(self) -> bool:
        """Until new bytes are in the Connection, or the peer hung up (returns False;
        then feed EOF). Raises the socket error if the connection broke."""
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        while not self._fresh and not self._eof and not self._lost:
            self._wakeup.clear()
            await self._wakeup.wait()
        if self._fresh:
            self._fresh = False
            return True
        if self._error is not None:
            raise self._error
        return False
