"""Harp binary streams: the messages Harp devices send, as Bonsai logs them (one file per register).

A Harp message is ``MessageType, Length, Address, Port, PayloadType, [Seconds u32,
Micros u16], payload..., Checksum``: ``Length`` counts the bytes after itself, the
timestamp (present when PayloadType has bit 0x10) is seconds plus units of 32 us on the
device's clock, and the checksum is the sum of all previous bytes modulo 256. Every
message is checked; a stream with a bad header, a bad checksum or a cut last message is
refused naming the file and the byte offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput

MESSAGE_TYPES = {1: "read", 2: "write", 3: "event"}
HAS_TIMESTAMP = 0x10
PAYLOAD_DTYPES = {
    0x01: np.uint8,
    0x02: np.uint16,
    0x04: np.uint32,
    0x08: np.uint64,
    0x81: np.int8,
    0x82: np.int16,
    0x84: np.int32,
    0x88: np.int64,
    0x44: np.float32,
}
TICK = 32e-6  # seconds per unit of the Micros field

# Harp Behavior board (whoAmI 1216): the registers this lab's rigs log
DIGITAL_INPUT_STATE = 32  # U8 bitmask of DI0..DI3, an event on every change
OUTPUT_SET = 34  # U16 bitmask of outputs switched on (valves, LEDs), written by Bonsai


@dataclass
class HarpStream:
    """Messages of one register: their type, timestamps (s, device clock) and payloads (messages, values)."""

    path: Path
    address: int
    message_type: np.ndarray
    times: np.ndarray
    values: np.ndarray

    def events(self) -> HarpStream:
        keep = self.message_type == 3
        return HarpStream(self.path, self.address, self.message_type[keep], self.times[keep], self.values[keep])

    def rising_edges(self, bit: int) -> np.ndarray:
        """Times at which ``bit`` of a bitmask register goes from 0 to 1 (the first sample counts if high)."""
        level = (self.values[:, 0].astype(np.int64) >> bit) & 1
        previous = np.concatenate([[0], level[:-1]])
        return self.times[(level == 1) & (previous == 0)]


def encode(message_type: int, address: int, payload_type: int, seconds: float, values, port: int = 255) -> bytes:
    """One timestamped Harp message (the simulator's and the tests' writer)."""
    dtype = np.dtype(PAYLOAD_DTYPES[payload_type]).newbyteorder("<")
    payload = np.asarray(values, dtype=dtype).tobytes()
    whole = int(seconds)
    micros = int(round((seconds - whole) / TICK))
    if micros >= 1 << 16:
        whole, micros = whole + 1, 0
    body = bytes([address, port, payload_type | HAS_TIMESTAMP]) + whole.to_bytes(4, "little")
    body += micros.to_bytes(2, "little") + payload
    head = bytes([message_type, len(body) + 1])
    checksum = (sum(head) + sum(body)) & 0xFF
    return head + body + bytes([checksum])


def read_stream(path: Path, address: int | None = None) -> HarpStream:
    """Every message of a one-register Harp file, checked; ``InvalidInput`` naming the file and offset if not."""
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    if not len(data):
        raise InvalidInput(path, "empty Harp stream", "check that the rig logged this register")
    length = int(data[1]) + 2 if len(data) > 1 else 0
    if length < 8 or len(data) < length:
        raise InvalidInput(path, f"first message is cut or malformed (length byte {data[1] if len(data) > 1 else ''})")
    count, remainder = divmod(len(data), length)
    if remainder:
        raise InvalidInput(
            path,
            f"{remainder} bytes after the last whole message at offset {count * length}: the stream is cut",
            "copy the file again from the rig",
        )
    messages = data.reshape(count, length)
    checks = (messages[:, :-1].sum(axis=1, dtype=np.uint64) & 0xFF).astype(np.uint8)
    bad = np.flatnonzero((checks != messages[:, -1]) | (messages[:, 1] != length - 2))
    if len(bad):
        raise InvalidInput(
            path,
            f"message {bad[0] + 1} at byte offset {bad[0] * length}: bad checksum or length ({len(bad)} bad messages)",
            "the file is damaged; copy it again from the rig",
        )
    types = messages[:, 0] & 0x07
    if not np.isin(types, list(MESSAGE_TYPES)).all() or (messages[:, 0] & 0x08).any():
        raise InvalidInput(path, "messages of unknown or error type", "the device reported errors; check the rig")
    addresses = np.unique(messages[:, 2])
    if len(addresses) != 1 or (address is not None and addresses[0] != address):
        raise InvalidInput(path, f"registers {addresses.tolist()} in one file, expected only {address}")
    payload_type = int(messages[0, 4])
    if not payload_type & HAS_TIMESTAMP or (messages[:, 4] != payload_type).any():
        raise InvalidInput(path, "messages without timestamps or of mixed payload types")
    dtype = np.dtype(PAYLOAD_DTYPES[payload_type & ~HAS_TIMESTAMP]).newbyteorder("<")
    seconds = messages[:, 5:9].copy().view("<u4")[:, 0].astype(np.float64)
    micros = messages[:, 9:11].copy().view("<u2")[:, 0].astype(np.float64)
    values = messages[:, 11:-1].copy().view(dtype)
    return HarpStream(path, int(addresses[0]), types, seconds + micros * TICK, values)
