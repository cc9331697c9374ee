"""Heartbeat wire format, sender sequencing and the receiver's bookkeeping."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Mapping

import pytest
from prometheus_client import CollectorRegistry

from astara.appliance.heartbeat import DriftWatch, HeartbeatSender, RunningState
from astara.orchestrator.heartbeat import HeartbeatReceiver, RateLimit
from astara.wire.heartbeat import (
    MAX_DATAGRAM,
    BadSignature,
    Heartbeat,
    Malformed,
    Replay,
    Stale,
    UnknownInstance,
    decode,
    encode,
    next_sequence,
)
from tests.unit.clock import FakeClock

pytestmark = pytest.mark.unit

KEY = b"k" * 32
# Lenient enough for any test that is not about the limit itself.
LIMIT = RateLimit(rate=1000.0, burst=1000.0, sources=16)
NOW = 1_700_000_000.0
BEAT = Heartbeat(
    instance_id="3f1c2a4e-0000-4000-8000-000000000001",
    sequence=42,
    sent_at=NOW,
    generation=7,
    digest="sha256:abcdef",
)


def keys(**known: bytes) -> dict[str, bytes]:
    return {BEAT.instance_id: KEY, **known}


def decode_now(datagram: bytes, last: int | None = None, now: float = NOW) -> Heartbeat:
    return decode(datagram, keys().get, now, 30.0, lambda _: last)


# Wire format


def test_round_trip_keeps_every_field() -> None:
    assert decode_now(encode(BEAT, KEY)) == BEAT


def test_drift_flag_round_trips() -> None:
    beat = BEAT._replace(drifted=True)
    assert decode_now(encode(beat, KEY)) == beat
    assert decode_now(encode(BEAT, KEY)).drifted is False


def test_drift_watch_checks_now_and_then_and_keeps_a_verdict_through_unknowns() -> None:
    clock = FakeClock(0.0)
    verdicts = iter([True, None, False])
    checks: list[float] = []

    def drift() -> bool | None:
        checks.append(clock.now)
        return next(verdicts)

    watch = DriftWatch(lambda: RunningState(3, "d"), drift, interval=30.0, clock=clock)
    assert watch.running_state() == RunningState(3, "d", drifted=True)
    clock.now = 29.0
    assert watch.running_state().drifted is True  # not checked again within the interval
    clock.now = 30.0
    assert watch.running_state().drifted is True  # an apply runs: unknown keeps the verdict
    clock.now = 31.0
    assert watch.running_state().drifted is False  # ...and is asked again at the next beat
    assert checks == [0.0, 30.0, 31.0]


def test_no_generation_yet_round_trips_as_none() -> None:
    beat = BEAT._replace(generation=None, digest="")
    assert decode_now(encode(beat, KEY)) == beat


def test_datagram_size_is_bounded() -> None:
    biggest = BEAT._replace(instance_id="i" * 64, digest="d" * 128)
    assert len(encode(biggest, KEY)) == MAX_DATAGRAM <= 512
    with pytest.raises(ValueError):
        encode(BEAT._replace(digest="d" * 129), KEY)
    with pytest.raises(ValueError):
        encode(BEAT._replace(instance_id=""), KEY)


def test_wrong_key_is_a_bad_signature() -> None:
    with pytest.raises(BadSignature):
        decode_now(encode(BEAT, b"x" * 32))


def test_any_flipped_byte_is_rejected() -> None:
    datagram = encode(BEAT, KEY)
    for index in range(len(datagram)):
        mangled = bytearray(datagram)
        mangled[index] ^= 0x01
        with pytest.raises((BadSignature, Malformed, UnknownInstance)):
            decode_now(bytes(mangled))


def test_unknown_instance() -> None:
    stranger = BEAT._replace(instance_id="someone-else")
    with pytest.raises(UnknownInstance):
        decode_now(encode(stranger, KEY))


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"AHB1",
        b"\x00" * 100,
        b"x" * (MAX_DATAGRAM + 1),
        encode(BEAT, KEY)[:-1],
        encode(BEAT, KEY) + b"\x00",
        b"XXXX" + encode(BEAT, KEY)[4:],
    ],
    ids=["empty", "magic-only", "zeros", "oversized", "truncated", "trailing", "bad-magic"],
)
def test_malformed(datagram: bytes) -> None:
    with pytest.raises(Malformed):
        decode_now(datagram)


def test_non_finite_timestamp_is_malformed() -> None:
    datagram = bytearray(encode(BEAT, KEY))
    struct.pack_into("!d", datagram, 13, float("nan"))
    with pytest.raises(Malformed):
        decode_now(bytes(datagram))


def test_replay_needs_a_greater_sequence() -> None:
    datagram = encode(BEAT, KEY)
    with pytest.raises(Replay):
        decode_now(datagram, last=BEAT.sequence)
    with pytest.raises(Replay):
        decode_now(datagram, last=BEAT.sequence + 1)
    assert decode_now(datagram, last=BEAT.sequence - 1) == BEAT


@pytest.mark.parametrize("offset", [-31.0, 31.0])
def test_stale_timestamp_either_way(offset: float) -> None:
    with pytest.raises(Stale):
        decode_now(encode(BEAT, KEY), now=NOW + offset)
    assert decode_now(encode(BEAT, KEY), now=NOW + offset / 2) == BEAT


def test_forgery_counts_as_bad_signature_even_when_also_stale() -> None:
    old_forgery = BEAT._replace(sent_at=NOW - 3600)
    with pytest.raises(BadSignature):
        decode_now(encode(old_forgery, b"x" * 32), last=BEAT.sequence)


# Sender


def test_sequence_survives_a_restart_and_clock_ties() -> None:
    first_run = next_sequence(0, NOW)
    second = next_sequence(first_run, NOW)  # same clock reading
    assert second == first_run + 1
    restarted = next_sequence(0, NOW + 0.001)  # a new process, a millisecond later
    assert restarted > second


def test_sender_beats_on_its_interval_with_current_state(receiver_pair) -> None:
    receiver, _ = receiver_pair
    states = iter(range(1000))

    def state() -> RunningState:
        return RunningState(generation=next(states), digest="d")

    sender = HeartbeatSender(BEAT.instance_id, KEY, receiver.address, state, interval=0.05)
    sender.start()
    time.sleep(0.5)
    sender.stop()
    assert 5 <= sender.sent <= 12  # about every 50 ms (a loaded machine may lag a little)
    deadline = time.monotonic() + 3  # the receiver's thread may still be reading the last ones
    while receiver.snapshot()[BEAT.instance_id].heartbeat.generation != sender.sent - 1:
        assert time.monotonic() < deadline, "the last heartbeat never arrived"
        time.sleep(0.01)
    assert receiver_pair[1].get_sample_value("astara_heartbeats_accepted_total") == sender.sent


def test_sender_skips_a_beat_when_state_is_unavailable(receiver_pair) -> None:
    receiver, _ = receiver_pair

    def broken() -> RunningState:
        raise RuntimeError("engine wedged")

    sender = HeartbeatSender(BEAT.instance_id, KEY, receiver.address, broken, interval=10)
    sender.start()
    try:
        assert sender.beat_once() is False
    finally:
        sender.stop()
    assert sender.sent == 0


@pytest.fixture
def receiver_pair():
    registry = CollectorRegistry()
    receiver = HeartbeatReceiver(("127.0.0.1", 0), registry, LIMIT)
    receiver.register(BEAT.instance_id, KEY)
    receiver.start()
    yield receiver, registry
    receiver.stop()


# Receiver bookkeeping


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def receiver(clock: FakeClock, registry: CollectorRegistry) -> HeartbeatReceiver:
    receiver = HeartbeatReceiver(("127.0.0.1", 0), registry, LIMIT, clock=clock)
    receiver.register(BEAT.instance_id, KEY)
    return receiver


def beat(seq: int, **changes) -> bytes:
    return encode(BEAT._replace(sequence=seq, **changes), KEY)


def rejected(registry: CollectorRegistry, reason: str) -> float | None:
    return registry.get_sample_value("astara_heartbeats_rejected_total", {"reason": reason})


def test_receiver_records_and_counts_by_reason(
    receiver: HeartbeatReceiver, registry: CollectorRegistry, clock: FakeClock
) -> None:
    assert rejected(registry, "replay") == 0  # every reason is exported from the start
    assert receiver.handle(beat(1)) is not None
    clock.now += 2
    assert receiver.handle(beat(2)) is not None
    assert receiver.handle(beat(2)) is None
    assert receiver.handle(beat(1)) is None
    assert receiver.handle(encode(BEAT, b"x" * 32)) is None
    assert receiver.handle(b"garbage") is None
    assert receiver.handle(beat(3, instance_id="other")) is None
    assert receiver.handle(beat(4, sent_at=NOW - 100)) is None
    assert registry.get_sample_value("astara_heartbeats_accepted_total") == 2
    assert {
        reason: rejected(registry, reason)
        for reason in ("replay", "bad_signature", "malformed", "unknown_instance", "stale")
    } == {"replay": 2, "bad_signature": 1, "malformed": 1, "unknown_instance": 1, "stale": 1}
    assert receiver.last_seen(BEAT.instance_id) == NOW + 2
    assert receiver.snapshot()[BEAT.instance_id].heartbeat.sequence == 2


def test_unregistered_instances_are_unknown_and_forgotten(receiver: HeartbeatReceiver) -> None:
    receiver.handle(beat(1))
    receiver.unregister(BEAT.instance_id)
    assert receiver.handle(beat(2)) is None
    assert receiver.last_seen(BEAT.instance_id) is None
    assert receiver.snapshot() == {}


def test_key_rotation_keeps_the_replay_floor(receiver: HeartbeatReceiver) -> None:
    receiver.handle(beat(5))
    new_key = b"n" * 32
    receiver.register(BEAT.instance_id, new_key)
    assert receiver.handle(encode(BEAT._replace(sequence=5), new_key)) is None
    assert receiver.handle(encode(BEAT._replace(sequence=6), new_key)) is not None
    assert receiver.handle(beat(7)) is None  # the old key no longer works


def test_liveness_is_armed_by_alive_at_or_the_first_beat(
    receiver: HeartbeatReceiver, clock: FakeClock
) -> None:
    receiver.register("quiet", KEY)
    receiver.register("booted", KEY, alive_at=NOW - 5)
    assert receiver.liveness() == {"booted": NOW - 5}
    receiver.handle(beat(1))
    assert receiver.liveness() == {"booted": NOW - 5, BEAT.instance_id: NOW}


def test_flush_hands_over_one_batch_and_keeps_it_on_failure(
    receiver: HeartbeatReceiver, clock: FakeClock
) -> None:
    receiver.register("other", KEY)
    receiver.handle(beat(1))
    receiver.handle(beat(1, instance_id="other"))
    clock.now += 1
    receiver.handle(beat(2))
    batches: list[Mapping[str, float]] = []

    def failing(batch: Mapping[str, float]) -> None:
        raise OSError("database away")

    with pytest.raises(OSError):
        receiver.flush(failing)
    assert receiver.flush(lambda batch: batches.append(dict(batch))) == 2
    assert batches == [{BEAT.instance_id: NOW + 1, "other": NOW}]
    assert receiver.flush(batches.append) == 0
    assert len(batches) == 1


def test_receiver_reads_in_batches_and_stops_promptly(monkeypatch) -> None:
    """Datagrams arriving within the batch window are read in one wake-up; stop does not
    wait for the window to end."""
    receiver = HeartbeatReceiver(("127.0.0.1", 0), CollectorRegistry(), LIMIT, batch_window=0.4)
    receiver.register(BEAT.instance_id, KEY)
    batches: list[tuple[float, int]] = []
    drain = receiver._drain
    monkeypatch.setattr(
        receiver, "_drain", lambda sock: batches.append((time.monotonic(), drain(sock))) or 0
    )
    receiver.start()
    try:
        now = time.time()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.sendto(beat(1, sent_at=now), receiver.address)
            deadline = time.monotonic() + 3
            while not batches:
                assert time.monotonic() < deadline, "the first heartbeat was never read"
                time.sleep(0.01)
            for seq in range(2, 7):
                out.sendto(beat(seq, sent_at=now), receiver.address)
        while len(batches) < 2:
            assert time.monotonic() < deadline, "the batch was never read"
            time.sleep(0.01)
        assert [count for _, count in batches] == [1, 5]
        assert batches[1][0] - batches[0][0] >= 0.35  # read after the window, not on arrival
        assert receiver.snapshot()[BEAT.instance_id].heartbeat.sequence == 6
    finally:
        started = time.monotonic()
        receiver.stop()
    assert time.monotonic() - started < 0.3


def test_receiver_reads_on_without_sleeping_under_load(monkeypatch) -> None:
    monkeypatch.setattr("astara.orchestrator.heartbeat.BUSY_BATCH", 1)  # every batch is busy
    receiver = HeartbeatReceiver(("127.0.0.1", 0), CollectorRegistry(), LIMIT, batch_window=5.0)
    receiver.register(BEAT.instance_id, KEY)
    receiver.start()
    try:
        now = time.time()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.sendto(beat(1, sent_at=now), receiver.address)  # a busy batch: no window...
            time.sleep(0.3)
            out.sendto(beat(10, sent_at=now), receiver.address)  # ...so this is read at once
        deadline = time.monotonic() + 2
        while receiver.snapshot()[BEAT.instance_id].heartbeat.sequence != 10:
            assert time.monotonic() < deadline, "read only after the window: slept when busy"
            time.sleep(0.01)
    finally:
        receiver.stop()
