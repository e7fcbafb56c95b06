"""Data exchange between task managers over TCP, with credit-based backpressure.

Every task manager runs one `ExchangeServer`. A channel between subtasks on different task
managers is one TCP connection from the producer's `RemoteOutputChannel` to the consumer's
`RemoteInputChannel`, named by a `ChannelKey` (execution, edge, upstream and downstream subtask).
The consumer grants as many credits as its channel holds batches (`pipeline.channel-capacity`),
the producer spends one per batch and waits at zero, and the consumer returns one each time its
subtask takes a batch: a slow consumer slows its producers exactly as a local channel does.
Barriers, watermarks and the end of input travel in the batches, so the consumer's `InputGate`
aligns barriers from remote channels like local ones.

The same server carries the control connections of distributed executions (`coordination`).

Frames are a 4-byte big-endian length and a payload. The first frame of a connection (the hello)
is JSON and carries the cluster token (checked in constant time before anything else is read);
the rest are pickles, accepted only from a peer that knew the token. Before the token matched, a
connection costs little: a hello longer than `HELLO_MAX_BYTES` is refused from its length alone
(its bytes are never read), a hello must arrive within `HANDSHAKE_TIMEOUT_S`, and at most
`MAX_HANDSHAKES` connections wait for theirs at once (a new one closes the oldest waiting, so a
peer that sends its hello at once still gets through while idle connections hold the bound).
Refusals are logged at most once per `REFUSAL_LOG_INTERVAL_S`, with how many were refused since.
A connection that breaks before the end of input fails the subtask that uses it with `PeerLost`
(the job then restarts from its latest checkpoint).
"""

import asyncio
import contextlib
import hmac
import json
import logging
import pickle
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from streamlet.channels import Batch, Channel
from streamlet.elements import EndOfInput

log = logging.getLogger("streamlet.cluster.exchange")
FRAME = struct.Struct(">I")
MAX_FRAME = 256 << 20  # after the token matched
HELLO_MAX_BYTES = 8 << 10
HANDSHAKE_TIMEOUT_S = 5.0
MAX_HANDSHAKES = 64
REFUSAL_LOG_INTERVAL_S = 10.0
CONNECT_TIMEOUT_S = 30.0
ChannelKey = tuple[str, int, int, int]  # (execution id, edge index, upstream, downstream)
ControlHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict], Awaitable[None]]


class PeerLost(ConnectionError):
    """The task manager at the other end of a channel or control connection went away."""


class FrameTooLarge(PeerLost):
    """A frame announced more bytes than the reader accepts (they are not read)."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"a frame of {length} bytes (the limit is {limit})")
        self.length = length
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.length, self.limit))  # unpickled through __init__'s arguments


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> bytes:
    """The next frame's payload; `FrameTooLarge` (nothing read) if it is longer than `limit`."""
    (length,) = FRAME.unpack(await reader.readexactly(FRAME.size))
    if length > limit:
        raise FrameTooLarge(length, limit)
    return await reader.readexactly(length)


def write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(FRAME.pack(len(payload)) + payload)


def write_message(writer: asyncio.StreamWriter, message: Any) -> None:
    write_frame(writer, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


async def read_message(reader: asyncio.StreamReader) -> Any:
    return pickle.loads(await read_frame(reader))


async def connect(
    address: str, hello: dict[str, Any], token: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection to a task manager's exchange server and introduce it."""
    host, _, port = address.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port)), CONNECT_TIMEOUT_S
        )
    except (OSError, TimeoutError) as e:
        raise PeerLost(f"cannot connect to the task manager at {address}: {e}") from e
    payload = json.dumps({**hello, "token": token}).encode()
    if len(payload) > HELLO_MAX_BYTES:
        writer.close()
        raise ValueError(f"a hello of {len(payload)} bytes exceeds {HELLO_MAX_BYTES}: {hello}")
    write_frame(writer, payload)
    return reader, writer


class _Refusals:
    """Logs refused connections at most once per interval, counting the ones in between."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last = -interval_s
        self._unlogged = 0

    def refused(self, peer: Any, reason: str) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._unlogged += 1
            return
        since = f" ({self._unlogged} more refused since the last message)" if self._unlogged else ""
        log.warning("exchange connection from %s refused: %s%s", peer, reason, since)
        self._last, self._unlogged = now, 0


class ExchangeServer:
    def __init__(
        self,
        host: str,
        token: str,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        max_handshakes: int = MAX_HANDSHAKES,
    ) -> None:
        self.host = host
        self.token = token
        self.handshake_timeout_s = handshake_timeout_s
        self.max_handshakes = max_handshakes
        # connections waiting for their hello, oldest first (a dict keeps insertion order)
        self._handshaking: dict[asyncio.StreamWriter, None] = {}
        self._refusals = _Refusals()
        self._inputs: dict[ChannelKey, asyncio.Future[RemoteInputChannel]] = {}
        self._controls: dict[str, asyncio.Future[ControlHandler]] = {}
        self._server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{self.host}:{port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def _slot(self, table: dict, key: Any) -> asyncio.Future:
        if key not in table:
            table[key] = asyncio.get_running_loop().create_future()
        return table[key]

    def register_input(self, key: ChannelKey, channel: "RemoteInputChannel") -> None:
        self._slot(self._inputs, key).set_result(channel)

    def register_control(self, execution_id: str, handler: ControlHandler) -> None:
        self._slot(self._controls, execution_id).set_result(handler)

    def forget(self, execution_id: str) -> None:
        """Drop the channels and control handler of a finished execution."""
        for key in [k for k in self._inputs if k[0] == execution_id]:
            self._inputs.pop(key).cancel()
        future = self._controls.pop(execution_id, None)
        if future is not None:
            future.cancel()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, Any] | None:
        """The connection's hello if it carries the token; None (the refusal logged) if not."""
        peer = writer.get_extra_info("peername")
        if len(self._handshaking) >= self.max_handshakes:
            oldest = next(iter(self._handshaking))
            del self._handshaking[oldest]
            oldest.close()  # its _handshake sees the end of the stream and returns None
            self._refusals.refused(
                oldest.get_extra_info("peername"),
                f"more than {self.max_handshakes} connections were waiting for their hello",
            )
        self._handshaking[writer] = None
        try:
            frame = await asyncio.wait_for(
                read_frame(reader, HELLO_MAX_BYTES), self.handshake_timeout_s
            )
        except FrameTooLarge as e:
            self._refusals.refused(
                peer, f"a hello of {e.length} bytes (the limit is {HELLO_MAX_BYTES})"
            )
            return None
        except TimeoutError:
            self._refusals.refused(peer, f"no hello within {self.handshake_timeout_s:g} s")
            return None
        except (asyncio.IncompleteReadError, ConnectionError):
            return None  # closed by the peer, or by us to make room
        finally:
            self._handshaking.pop(writer, None)
        try:
            hello = json.loads(frame)
        except ValueError:
            hello = None
        if not isinstance(hello, dict) or not hmac.compare_digest(
            str(hello.get("token", "")).encode(), self.token.encode()
        ):
            self._refusals.refused(peer, "a hello without the cluster token")
            return None
        return hello

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = await self._handshake(reader, writer)
            if hello is None:
                return
            if hello.get("kind") == "data":
                key = (str(hello["execution"]), *map(int, hello["channel"]))
                channel = await asyncio.wait_for(self._slot(self._inputs, key), CONNECT_TIMEOUT_S)
                await channel.serve(reader, writer)
            elif hello.get("kind") == "control":
                future = self._slot(self._controls, str(hello["execution"]))
                handler = await asyncio.wait_for(future, CONNECT_TIMEOUT_S)
                await handler(reader, writer, hello)
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            ValueError,
            KeyError,
            TypeError,
            TimeoutError,
        ) as e:
            log.debug("exchange connection ended: %r", e)
        finally:
            writer.close()


class RemoteInputChannel(Channel):
    """The consumer's end: batches arrive from the network; taking one returns a credit."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._capacity_credits = capacity
        self._writer: asyncio.StreamWriter | None = None
        self._error: PeerLost | None = None
        self._ended = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Receive batches until the end of input (or a broken connection)."""
        self._writer = writer
        write_message(writer, self._capacity_credits)
        await writer.drain()
        try:
            while not self._ended:
                batch: Batch = await read_message(reader)
                self._ended = bool(batch) and isinstance(batch[-1], EndOfInput)
                self.offer(batch)
        except Exception as e:  # a broken connection or a batch that does not unpickle
            self._error = PeerLost(f"the upstream task manager went away: {e!r}")
            self.offer([])  # wake the consumer, which then sees the error

    def poll(self) -> Batch | None:
        batch = super().poll()
        if batch == [] and self._error is not None:
            raise self._error
        if batch is not None and self._writer is not None and not self._ended:
            write_message(self._writer, 1)
        return batch


class RemoteOutputChannel:
    """The producer's end: `put` spends a credit per batch and waits while it has none."""

    def __init__(self, address: str, execution_id: str, key: ChannelKey, token: str) -> None:
        self.address = address
        self._hello = {"kind": "data", "execution": execution_id, "channel": list(key[1:])}
        self._token = token
        self._credits = 0
        self._credit = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._error: PeerLost | None = None

    async def _connect(self) -> asyncio.StreamWriter:
        reader, writer = await connect(self.address, self._hello, self._token)
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read_credits(reader))
        return writer

    async def _read_credits(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                self._credits += await read_message(reader)
                self._credit.set()
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            self._error = PeerLost(f"the downstream task manager at {self.address} went away: {e}")
            self._credit.set()

    async def put(self, batch: Batch) -> None:
        writer = self._writer or await self._connect()
        while self._credits == 0:
            if self._error is not None:
                raise self._error
            self._credit.clear()
            await self._credit.wait()
        self._credits -= 1
        write_message(writer, batch)
        try:
            await writer.drain()
        except ConnectionError as e:
            raise PeerLost(f"the downstream task manager at {self.address} went away: {e}") from e
        if batch and isinstance(batch[-1], EndOfInput):
            await self.close()

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
