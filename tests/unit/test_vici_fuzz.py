"""Hostile bytes from charon's socket, over a real unix socket and the real client.

Whatever charon (or something squatting on its socket) writes - random bytes, truncated
packets, length prefixes beyond the limit, well-framed garbage - the client ends in one of
three clear states, in bounded time: it delivers what is well formed, it drops the connection
and reconnects (then resyncs), or a pending request fails with a ViciException. Never an
unhandled exception, never a stalled supervisor, never a request that outlives its timeout.

The stream oracle (`framing`) splits the bytes the way the client must, so each example knows
which of those states to expect. Examples per test: VPND_FUZZ_EXAMPLES (default 40; the long
run in docs/scale.md uses 2000).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import tempfile
from contextlib import asynccontextmanager

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from vici.protocol import Packet

from vpnd_testing.fake_charon import FakeCharon, event_packet, response_packet
from vpnd.charon.vici import MAX_PACKET, Backoff, ViciClient, ViciException

EXAMPLES = int(os.environ.get("VPND_FUZZ_EXAMPLES", "0")) or 40
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

GOOD_MSG = {"up": "yes", "vpnd-c1-t1": {"uniqueid": "7", "state": "ESTABLISHED"}}
GOOD = event_packet("ike-updown", GOOD_MSG)
REQUEST_TIMEOUT = 0.1


def frame(packet: bytes) -> bytes:
    return struct.pack("!I", len(packet)) + packet


# --- what a hostile peer writes --------------------------------------------------------------

VALID_PACKETS = [
    GOOD,
    event_packet("log", {"group": "IKE", "level": "1", "msg": "retransmit 1 of request"}),
    event_packet("child-updown", {"vpnd-c1-t1": {"uniqueid": "7", "child-sas": {
        "vpnd-c1-t1-9": {"uniqueid": "9", "state": "INSTALLED"}}}}),
    event_packet("list-sa", {"vpnd-c1-t1": {"uniqueid": "7", "state": "ESTABLISHED"}}),
    response_packet({"success": "yes", "daemon": "charon"}),
    response_packet({"success": "no", "errmsg": "nope"}),
    response_packet(None, Packet.EVENT_CONFIRM),
    response_packet(None, Packet.CMD_UNKNOWN),
    Packet.request("version"),
]


def _flip(packet: bytes, positions: list[int], values: list[int]) -> bytes:
    b = bytearray(packet)
    for i, v in zip(positions, values):
        if b:
            b[i % len(b)] = v
    return bytes(b)


valid = st.sampled_from(VALID_PACKETS)
hostile_piece = st.one_of(
    st.binary(max_size=200),                                            # no framing at all
    valid.flatmap(lambda p: st.integers(0, len(p) + 3).map(lambda n: frame(p)[:n])),  # truncated
    st.tuples(st.integers(MAX_PACKET + 1, 2**32 - 1), st.binary(max_size=32)).map(
        lambda t: struct.pack("!I", t[0]) + t[1]),                      # oversized length prefix
    st.binary(max_size=120).map(frame),                                 # framed garbage
    st.tuples(valid, st.lists(st.integers(0, 10**6), max_size=4),
              st.lists(st.integers(0, 255), max_size=4)).map(
        lambda t: frame(_flip(*t))),                                    # framed, bytes flipped
    st.tuples(st.sampled_from([b"log", b"ike-updown", b"list-sa"]), st.binary(max_size=60)).map(
        lambda t: frame(bytes([Packet.EVENT, len(t[0])]) + t[0] + t[1])),  # event, garbage body
    st.binary(max_size=60).map(lambda b: frame(bytes([Packet.CMD_RESPONSE]) + b)),  # garbage answer
    valid.map(frame),                                                   # well formed
)
hostile = st.lists(hostile_piece, min_size=1, max_size=5).map(b"".join)


def framing(data: bytes, limit: int = MAX_PACKET) -> tuple[str, list[bytes]]:
    """How the client must split `data`: ("lost" | "partial" | "complete", whole packets)."""
    packets, i = [], 0
    while i < len(data):
        if len(data) - i < 4:
            return "partial", packets
        (length,) = struct.unpack_from("!I", data, i)
        if length > limit:
            return "lost", packets
        if len(data) - i - 4 < length:
            return "partial", packets
        packets.append(data[i + 4:i + 4 + length])
        i += 4 + length
    return "complete", packets


# --- one client against one fake charon, per example -------------------------------------------

class Trace:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.connects = 0
        self.disconnects: list[str] = []
        self.loop_errors: list[dict] = []

    def on_event(self, name: str, msg: dict) -> None:
        self.events.append((name, msg))

    async def on_connect(self) -> None:
        self.connects += 1

    def on_disconnect(self, reason: str) -> None:
        self.disconnects.append(reason)


async def until(predicate, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


async def recovered(client: ViciClient, timeout: float = 3.0) -> None:
    """A clean answer within `timeout`. Leftover garbage may still break the next request or
    two (a clear ViciException, then a reconnect): that is allowed, hanging is not."""
    async with asyncio.timeout(timeout):
        while True:
            await until(lambda: client.connected, timeout, "connected")
            try:
                if (await client.version()).get("daemon") == "charon":
                    return
            except ViciException:
                await asyncio.sleep(0.005)


@asynccontextmanager
async def session():
    d = tempfile.mkdtemp(prefix="vfz-", dir="/tmp")
    trace = Trace()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: trace.loop_errors.append(ctx))
    fake = await FakeCharon(f"{d}/charon.vici").start()
    client = ViciClient(fake.path, on_event=trace.on_event, on_connect=trace.on_connect,
                        on_disconnect=trace.on_disconnect, request_timeout=REQUEST_TIMEOUT,
                        connect_timeout=1.0, backoff=Backoff(base=0.002, cap=0.02))
    try:
        with capture_logs() as logs:
            client.start()
            await until(lambda: trace.connects == 1 and client.connected, 2.0, "first connect")
            await fake.wait_registered("ike-updown")
            yield fake, client, trace
            # Whatever happened, the client is usable again, and nothing blew up on the way.
            await recovered(client)
            assert client._task is not None and not client._task.done(), "supervisor died"
        assert not [e for e in logs if e.get("exc_info")], logs
        assert trace.loop_errors == []
    finally:
        await client.stop()
        await fake.stop()
        shutil.rmtree(d, ignore_errors=True)


# --- the properties -------------------------------------------------------------------------------

@FUZZ
@given(hostile)
def test_event_socket_garbage_is_delivered_dropped_or_reconnected(data):
    """Garbage then a good event on the event socket, connection kept open."""
    stream = data + frame(GOOD)
    state, packets = framing(stream)

    async def scenario():
        async with session() as (fake, client, trace):
            fake.emit_raw(stream)
            if state == "lost":                 # the client must notice and start over
                await until(lambda: trace.connects >= 2, 3.0, "reconnect after lost framing")
                assert trace.disconnects
            elif state == "complete" and packets[-1] == GOOD:
                await until(lambda: ("ike-updown", GOOD_MSG) in trace.events, 2.0, "good event")
                assert trace.connects == 1 and trace.disconnects == []
            else:
                # The garbage's length prefix swallowed the good event: the client waits for
                # the rest of that packet (charon's stream gives no way to resync inside it).
                # It must still be alive and recover when the socket goes.
                await asyncio.sleep(0.02)
                assert trace.connects == 1
                fake.drop_all()
                await until(lambda: trace.connects >= 2, 3.0, "reconnect after drop")
            for name, msg in trace.events:     # only what was well formed came through
                assert isinstance(name, str) and isinstance(msg, dict)
    asyncio.run(scenario())


@FUZZ
@given(hostile)
def test_event_socket_garbage_then_close_always_reconnects(data):
    async def scenario():
        async with session() as (fake, client, trace):
            fake.emit_raw(data)
            fake.drop_all()
            await until(lambda: trace.connects >= 2, 3.0, "reconnect")
            fake.emit("ike-updown", GOOD_MSG)
            await until(lambda: ("ike-updown", GOOD_MSG) in trace.events, 2.0, "event after reconnect")
    asyncio.run(scenario())


@FUZZ
@given(hostile)
def test_garbage_before_a_response_ends_the_request_in_time(data):
    """Garbage on the command socket while a request waits: the request ends within its
    timeout - answered, or a ViciException - and the client is usable afterwards."""
    async def scenario():
        async with session() as (fake, client, trace):
            fake.inject_before_response.append(data)
            loop = asyncio.get_running_loop()
            start = loop.time()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT + 1.0):
                    body, _ = await client.request("version")
                assert isinstance(body, dict)
            except ViciException:
                pass
            assert loop.time() - start < REQUEST_TIMEOUT + 0.5
    asyncio.run(scenario())


@FUZZ
@given(hostile)
def test_garbage_as_the_whole_answer_fails_or_times_out(data):
    """The answer itself replaced by garbage (a squatter on the socket)."""
    async def scenario():
        async with session() as (fake, client, trace):
            fake.handlers["get-conns"] = lambda conn, body: conn.send_raw(data)
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT + 1.0):
                    await client.request("get-conns", timeout=0.03)   # mostly no answer
            except ViciException:
                pass
            del fake.handlers["get-conns"]
    asyncio.run(scenario())


def test_oracle_splits_like_the_client():
    assert framing(frame(b"ab") + frame(b"")) == ("complete", [b"ab", b""])
    assert framing(frame(b"abc")[:5]) == ("partial", [])
    assert framing(struct.pack("!I", MAX_PACKET + 1)) == ("lost", [])
    assert framing(b"\x00\x00") == ("partial", [])


async def test_connected_turns_false_the_moment_a_connection_breaks():
    """Found by the fuzzer: `connected` stayed true until the supervisor noticed the break,
    so a caller checking it got ViciUnavailable from the very next request."""
    async with session() as (fake, client, trace):
        client._cmd.close("broken under test")
        assert not client.connected                 # before the supervisor has run at all
        await until(lambda: trace.connects >= 2 and client.connected, 3.0, "reconnect")
