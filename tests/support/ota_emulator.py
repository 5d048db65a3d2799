"""An asyncio ESPHome OTA device: the server side of ``esphome/espota2.py``.

It follows the device firmware (``components/esphome/ota/ota_esphome.cpp``) byte for
byte, so the real ``esphome upload`` cannot tell it from a device:

1. client sends magic ``6C 26 F7 5C 45``; device answers ``00`` + OTA version (2);
2. client sends its feature byte; with the extended protocol (0x04) the device
   answers ``48`` + server feature flags, else ``46`` (compression) or ``40``;
3. with a password, the device requires SHA-256 auth (client feature 0x02): it sends
   ``02`` + a 64-hex-char nonce, reads a 64-char cnonce and the 64-char
   ``sha256(password + nonce + cnonce)``; a mismatch answers ``82`` and closes;
4. ``41`` (auth OK); extended protocol: one OTA-type byte; 4-byte big-endian size →
   ``42``; 32-char hex MD5 → ``43``;
5. the image, acknowledged with ``47`` per 8 KiB block (OTA v2) and once at the end;
6. ``44`` (received), MD5 and payload checks, ``45`` (update end OK), and the client's
   final ``00``.

``rate`` limits how fast the device reads the image (bytes/s), so a test or benchmark
can stand in for a slow radio link (a Thread device at a few KB/s). ``port`` is 0 by
default; pass 3232 to look like an ESP32 or 8266 like an ESP8266.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

MAGIC = bytes([0x6C, 0x26, 0xF7, 0x5C, 0x45])
OTA_VERSION_2 = 2

RESPONSE_OK = 0x00
RESPONSE_REQUEST_SHA256_AUTH = 0x02
RESPONSE_HEADER_OK = 0x40
RESPONSE_AUTH_OK = 0x41
RESPONSE_UPDATE_PREPARE_OK = 0x42
RESPONSE_BIN_MD5_OK = 0x43
RESPONSE_RECEIVE_OK = 0x44
RESPONSE_UPDATE_END_OK = 0x45
RESPONSE_SUPPORTS_COMPRESSION = 0x46
RESPONSE_CHUNK_OK = 0x47
RESPONSE_FEATURE_FLAGS = 0x48

RESPONSE_ERROR_MAGIC = 0x80
RESPONSE_ERROR_UPDATE_PREPARE = 0x81
RESPONSE_ERROR_AUTH_INVALID = 0x82
RESPONSE_ERROR_UPDATE_END = 0x84
RESPONSE_ERROR_MD5_MISMATCH = 0x8B
RESPONSE_ERROR_UNSUPPORTED_OTA_TYPE = 0x8E
RESPONSE_ERROR_UNKNOWN = 0xFF

CLIENT_FEATURE_SUPPORTS_COMPRESSION = 0x01
CLIENT_FEATURE_SUPPORTS_SHA256_AUTH = 0x02
CLIENT_FEATURE_SUPPORTS_EXTENDED_PROTOCOL = 0x04
SERVER_FEATURE_SUPPORTS_COMPRESSION = 0x01

OTA_TYPE_UPDATE_APP = 0x00

# The device acknowledges every OTA_BLOCK_SIZE bytes and reads OTA_BUFFER_SIZE at a
# time (ota_esphome.cpp); the client waits for each ack, so the device's read rate is
# what the client's progress bar shows.
OTA_BLOCK_SIZE = 8192
OTA_BUFFER_SIZE = 1024
SHA256_HEX_SIZE = 64
# ESP32 flash limits sit far below this; the host backend caps at 256 MiB.
MAX_IMAGE_SIZE = 16 * 1024 * 1024
# A stuck client must not hold the (single-client) device forever.
READ_TIMEOUT = 30.0

Validator = Callable[[bytes], int | None]
"""Inspect a received image; return an error code (e.g. 0x84) to reject it."""


def reject_non_elf(image: bytes) -> int | None:
    """What the host backend does: anything but an ELF executable ends the update in 0x84."""
    return None if image[:4] == b"\x7fELF" else RESPONSE_ERROR_UPDATE_END


@dataclass
class ReceivedImage:
    """One completed (or rejected) upload as the device saw it."""

    size: int
    md5: str
    data: bytes
    compressed: bool
    duration: float
    accepted: bool
    error: int | None = None


@dataclass
class OtaEmulator:
    """An ESPHome OTA endpoint on 127.0.0.1. Use ``async with`` or start()/stop()."""

    password: str | None = None
    port: int = 0
    host: str = "127.0.0.1"
    rate: float | None = None
    """Receive rate in bytes/s; None reads as fast as loopback allows."""
    compression: bool = False
    """Advertise gzip support, as an ESP8266 does (ESP32/host do not)."""
    version: int = OTA_VERSION_2
    validator: Validator | None = None
    prepare_error: int | None = None
    """Answer the size with this error instead of 0x42 (a device that refuses updates)."""
    uploads: list[ReceivedImage] = field(default_factory=list)
    auth_failures: int = 0
    connections: int = 0

    def __post_init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._done = asyncio.Condition()
        self._received_bytes = 0

    @property
    def received_bytes(self) -> int:
        """Image bytes read so far, across uploads (watch a slow upload advance)."""
        return self._received_bytes

    async def start(self) -> OtaEmulator:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> OtaEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for_uploads(self, count: int, timeout: float = 30.0) -> list[ReceivedImage]:
        """Wait until ``count`` uploads have finished (accepted or not)."""
        async with asyncio.timeout(timeout), self._done:
            await self._done.wait_for(lambda: len(self.uploads) >= count)
        return self.uploads

    async def _finish(self, image: ReceivedImage) -> None:
        async with self._done:
            self.uploads.append(image)
            self._done.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                await self._session(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send(*codes: int) -> None:
            writer.write(bytes(codes))
            await writer.drain()

        if await reader.readexactly(len(MAGIC)) != MAGIC:
            await send(RESPONSE_ERROR_MAGIC)
            return
        await send(RESPONSE_OK, self.version)

        features = (await reader.readexactly(1))[0]
        compress = self.compression and bool(features & CLIENT_FEATURE_SUPPORTS_COMPRESSION)
        extended = bool(features & CLIENT_FEATURE_SUPPORTS_EXTENDED_PROTOCOL)
        if extended:
            await send(
                RESPONSE_FEATURE_FLAGS, SERVER_FEATURE_SUPPORTS_COMPRESSION if compress else 0
            )
        else:
            await send(RESPONSE_SUPPORTS_COMPRESSION if compress else RESPONSE_HEADER_OK)

        if self.password is not None and not await self._authenticate(reader, features, send):
            self.auth_failures += 1
            return
        await send(RESPONSE_AUTH_OK)

        if extended and (await reader.readexactly(1))[0] != OTA_TYPE_UPDATE_APP:
            await send(RESPONSE_ERROR_UNSUPPORTED_OTA_TYPE)
            return
        size = int.from_bytes(await reader.readexactly(4), "big")
        if self.prepare_error is not None or size == 0 or size > MAX_IMAGE_SIZE:
            await send(self.prepare_error or RESPONSE_ERROR_UPDATE_PREPARE)
            return
        await send(RESPONSE_UPDATE_PREPARE_OK)
        md5 = (await reader.readexactly(32)).decode("ascii", "replace")
        await send(RESPONSE_BIN_MD5_OK)

        started = time.monotonic()
        data = await self._receive(reader, writer, size, started)
        await send(RESPONSE_RECEIVE_OK)

        error = self._check(data, md5, compress)
        payload = gzip.decompress(data) if compress and error is None else data
        duration = time.monotonic() - started
        if error is not None:
            await send(error)
            await self._finish(ReceivedImage(size, md5, payload, compress, duration, False, error))
            return
        await send(RESPONSE_UPDATE_END_OK)
        # The client's closing acknowledgement; the device does not insist on it.
        with contextlib.suppress(asyncio.IncompleteReadError):
            await reader.readexactly(1)
        await self._finish(ReceivedImage(size, md5, payload, compress, duration, True))

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        features: int,
        send: Callable[..., Awaitable[None]],
    ) -> bool:
        assert self.password is not None
        if not features & CLIENT_FEATURE_SUPPORTS_SHA256_AUTH:
            await send(RESPONSE_ERROR_AUTH_INVALID)
            return False
        # The firmware hashes random bytes to get a hex nonce of the digest's length.
        nonce = hashlib.sha256(secrets.token_bytes(8)).hexdigest().encode()
        await send(RESPONSE_REQUEST_SHA256_AUTH, *nonce)
        answer = await reader.readexactly(2 * SHA256_HEX_SIZE)
        cnonce, response = answer[:SHA256_HEX_SIZE], answer[SHA256_HEX_SIZE:]
        expected = hashlib.sha256(self.password.encode() + nonce + cnonce).hexdigest()
        if not secrets.compare_digest(expected.encode(), response.lower()):
            await send(RESPONSE_ERROR_AUTH_INVALID)
            return False
        return True

    async def _receive(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        size: int,
        started: float,
    ) -> bytes:
        buf = bytearray()
        acked = 0
        while len(buf) < size:
            chunk = await reader.read(min(OTA_BUFFER_SIZE, size - len(buf)))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(buf), size)
            buf += chunk
            self._received_bytes += len(chunk)
            while self.version >= OTA_VERSION_2 and (
                acked + OTA_BLOCK_SIZE <= len(buf) or (len(buf) == size and acked < size)
            ):
                writer.write(bytes([RESPONSE_CHUNK_OK]))
                acked += OTA_BLOCK_SIZE
            await writer.drain()
            if self.rate:
                # Sleep until the bytes read so far fit the configured rate.
                ahead = len(buf) / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        return bytes(buf)

    def _check(self, data: bytes, md5: str, compressed: bool) -> int | None:
        if hashlib.md5(data).hexdigest() != md5.lower():
            return RESPONSE_ERROR_MD5_MISMATCH
        if self.validator is not None:
            payload = gzip.decompress(data) if compressed else data
            return self.validator(payload)
        return None


class OtaDevices:
    """Several ``OtaEmulator`` devices served from a thread, for tests that are not async.

    A daemon under test flashes them through a (stand-in or real) ``esphome upload``;
    the devices' own records (``images(i)``) say what each one received, whatever the
    daemon believes. They outlive daemon restarts: start them once per test.
    """

    def __init__(self, count: int, **options: object) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ota-devices", daemon=True)
        self.devices = [OtaEmulator(**options) for _ in range(count)]  # type: ignore[arg-type]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> OtaDevices:
        self._thread.start()
        for device in self.devices:
            asyncio.run_coroutine_threadsafe(device.start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        for device in self.devices:
            asyncio.run_coroutine_threadsafe(device.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def port(self, index: int) -> int:
        return self.devices[index].port

    def images(self, index: int) -> list[ReceivedImage]:
        """A copy of what device ``index`` received so far (accepted or not)."""

        async def copy() -> list[ReceivedImage]:
            return list(self.devices[index].uploads)

        return asyncio.run_coroutine_threadsafe(copy(), self._loop).result(10)

    def __enter__(self) -> OtaDevices:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
