"""Harp streams: messages as the devices write them, read back and checked byte by byte."""

import numpy as np
import pytest
from labpipe.behavior.harp import DIGITAL_INPUT_STATE, encode, read_stream
from labpipe.errors import InvalidInput


def test_a_message_has_harps_layout_and_checksum():
    message = encode(3, 32, 0x01, 12.5, [0b101])
    assert message[:5] == bytes([3, 11, 32, 255, 0x11])  # event, length after itself, address, port, U8|timestamp
    assert int.from_bytes(message[5:9], "little") == 12 and int.from_bytes(message[9:11], "little") == 15625
    assert message[-1] == sum(message[:-1]) & 0xFF


def test_a_stream_reads_back_times_values_and_edges(tmp_path):
    times = np.cumsum(np.random.default_rng(0).uniform(0.001, 0.1, 200)) + 1000
    levels = np.arange(200) % 2  # bit 1 toggles
    path = tmp_path / "Behavior_32.bin"
    path.write_bytes(b"".join(encode(3, 32, 0x01, t, [lv << 1]) for t, lv in zip(times, levels, strict=True)))
    stream = read_stream(path, DIGITAL_INPUT_STATE)
    np.testing.assert_allclose(stream.times, times, atol=32e-6)
    np.testing.assert_allclose(stream.rising_edges(1), times[1::2], atol=32e-6)
    u16 = tmp_path / "Behavior_34.bin"
    u16.write_bytes(encode(2, 34, 0x02, 5.0, [513]) * 3)
    assert read_stream(u16).values[:, 0].tolist() == [513] * 3


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-4], "bytes after the last whole message"),
        (lambda b: b[:20] + bytes([b[20] ^ 0xFF]) + b[21:], "message 2 at byte offset 13: bad checksum"),
        (lambda b: b"", "empty Harp stream"),
        (lambda b: b + encode(3, 33, 0x01, 9.0, [1]), "registers [32, 33] in one file"),
    ],
)
def test_a_damaged_stream_is_refused_naming_the_file_and_the_place(tmp_path, damage, message):
    good = b"".join(encode(3, 32, 0x01, 1.0 + i, [i % 2]) for i in range(5))
    path = tmp_path / "Behavior_32.bin"
    path.write_bytes(damage(good))
    with pytest.raises(InvalidInput, match="Behavior_32.bin") as caught:
        read_stream(path, 32)
    assert message in str(caught.value)
