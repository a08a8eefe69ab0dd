"""ReceiveBuffer: lines, sizes and limits, byte logic only (no sockets)."""

from __future__ import annotations

import pytest

from handlers import BufferLimitExceeded, LimitExceeded, LineTooLong
from handlers.buffers import ReceiveBuffer


def make(max_line_length: int = 100, max_size: int = 1000) -> ReceiveBuffer:
    return ReceiveBuffer(max_line_length, max_size)


def test_feed_then_take_returns_bytes_in_order() -> None:
    buf = make()
    buf.feed(b"abc")
    buf.feed(b"def")
    assert len(buf) == 6
    assert buf.take(2) == b"ab"
    assert len(buf) == 4
    assert buf.take(100) == b"cdef"
    assert len(buf) == 0


def test_take_negative_takes_everything_and_take_zero_nothing() -> None:
    buf = make()
    buf.feed(b"hello")
    assert buf.take(0) == b""
    assert len(buf) == 5
    assert buf.take(-1) == b"hello"
    assert buf.take(-1) == b""


def test_take_returns_immutable_bytes() -> None:
    buf = make()
    buf.feed(bytearray(b"xy"))
    out = buf.take(1)
    assert type(out) is bytes and out == b"x"
    out = buf.take(-1)
    assert type(out) is bytes and out == b"y"


def test_take_line_returns_one_line_with_its_newline() -> None:
    buf = make()
    buf.feed(b"one\ntwo\nthr")
    assert buf.take_line() == b"one\n"
    assert buf.take_line() == b"two\n"
    assert buf.take_line() is None  # "thr" needs more input
    assert len(buf) == 3


def test_a_line_split_across_feeds_is_joined() -> None:
    buf = make()
    for piece in (b"hel", b"lo w", b"orld"):
        buf.feed(piece)
        assert buf.take_line() is None
    buf.feed(b"\nnext")
    assert buf.take_line() == b"hello world\n"
    assert buf.take(-1) == b"next"


def test_an_empty_line_is_just_the_newline() -> None:
    buf = make()
    buf.feed(b"\n\nx")
    assert buf.take_line() == b"\n"
    assert buf.take_line() == b"\n"
    assert buf.take_line() is None


def test_take_line_with_limit_cuts_a_long_line() -> None:
    buf = make()
    buf.feed(b"abcdef\n")
    assert buf.take_line(limit=4) == b"abcd"
    assert buf.take_line() == b"ef\n"


def test_take_line_limit_larger_than_the_line_returns_the_line() -> None:
    buf = make()
    buf.feed(b"ab\ncd")
    assert buf.take_line(limit=10) == b"ab\n"


def test_take_line_limit_exactly_the_line_length_includes_the_newline() -> None:
    buf = make()
    buf.feed(b"ab\n")
    assert buf.take_line(limit=3) == b"ab\n"


def test_take_line_limit_without_newline_returns_limit_bytes_once_available() -> None:
    buf = make()
    buf.feed(b"abc")
    assert buf.take_line(limit=5) is None  # neither a newline nor 5 bytes yet
    buf.feed(b"de")
    assert buf.take_line(limit=5) == b"abcde"
    assert len(buf) == 0


def test_take_line_limit_zero_returns_empty_bytes() -> None:
    buf = make()
    buf.feed(b"abc\n")
    assert buf.take_line(limit=0) == b""
    assert len(buf) == 4


def test_line_of_exactly_max_line_length_is_still_waited_for() -> None:
    buf = make(max_line_length=4)
    buf.feed(b"abcd")
    assert buf.take_line() is None
    buf.feed(b"\n")
    assert buf.take_line() == b"abcd\n"


def test_line_too_long_without_newline_raises() -> None:
    buf = make(max_line_length=4)
    buf.feed(b"abcde")
    with pytest.raises(LineTooLong, match="max_line_length=4"):
        buf.take_line()
    assert len(buf) == 5  # nothing consumed


def test_line_too_long_is_a_limit_exceeded_value_error() -> None:
    assert issubclass(LineTooLong, LimitExceeded)
    assert issubclass(BufferLimitExceeded, LimitExceeded)
    assert issubclass(LimitExceeded, ValueError)


def test_a_long_complete_line_already_buffered_is_returned_not_refused() -> None:
    buf = make(max_line_length=4)
    buf.feed(b"abcdefgh\n")
    assert buf.take_line() == b"abcdefgh\n"  # the bound is on waiting, not on lines found


def test_limit_smaller_than_max_line_length_avoids_line_too_long() -> None:
    buf = make(max_line_length=4)
    buf.feed(b"abcdefgh")
    assert buf.take_line(limit=3) == b"abc"


def test_feed_beyond_max_size_raises_and_keeps_what_was_buffered() -> None:
    buf = make(max_size=10)
    buf.feed(b"12345")
    buf.feed(b"67890")  # exactly at the bound: accepted
    with pytest.raises(BufferLimitExceeded, match="max_buffer_size=10"):
        buf.feed(b"x")
    assert buf.take(-1) == b"1234567890"
    buf.feed(b"x" * 10)  # room again after taking


def test_a_newline_arriving_after_a_long_partial_line_is_found() -> None:
    # The scan offset remembers how far it looked; a later newline must still be found,
    # and a newline within the already-scanned part cannot have been missed.
    buf = make(max_line_length=10_000, max_size=100_000)
    buf.feed(b"x" * 5000)
    assert buf.take_line() is None
    assert buf._scanned == 5000  # the next search starts where this one ended
    buf.feed(b"y" * 3000)
    assert buf.take_line() is None
    assert buf._scanned == 8000
    buf.feed(b"z\nrest")
    assert buf.take_line() == b"x" * 5000 + b"y" * 3000 + b"z\n"
    assert buf._scanned == 0
    assert buf.take_line() is None
    buf.feed(b"\n")
    assert buf.take_line() == b"rest\n"


def test_scan_offset_is_reset_when_bytes_are_taken() -> None:
    buf = make()
    buf.feed(b"abcdef")
    assert buf.take_line() is None
    assert buf.take(4) == b"abcd"  # the remaining "ef" has moved to offset 0
    buf.feed(b"\n")
    assert buf.take_line() == b"ef\n"


def test_scan_offset_is_reset_by_a_limited_take_line() -> None:
    buf = make()
    buf.feed(b"abcdef")
    assert buf.take_line() is None
    assert buf.take_line(limit=5) == b"abcde"
    buf.feed(b"\n")
    assert buf.take_line() == b"f\n"


def test_line_too_long_is_detected_across_feeds() -> None:
    buf = make(max_line_length=6)
    buf.feed(b"abc")
    assert buf.take_line() is None
    buf.feed(b"def")
    assert buf.take_line() is None
    buf.feed(b"g")
    with pytest.raises(LineTooLong):
        buf.take_line()
    buf.feed(b"\n")  # the line did end after all: it is still there to take
    assert buf.take_line() == b"abcdefg\n"


@pytest.mark.parametrize("sizes", [[1] * 12, [3, 3, 3, 3], [5, 7], [11, 1], [12]])
def test_lines_come_out_the_same_however_the_input_is_split(sizes: list[int]) -> None:
    data = b"ab\ncdef\n\ngh\n"
    buf = make()
    lines: list[bytes] = []
    offset = 0
    for size in sizes:
        buf.feed(data[offset:offset + size])
        offset += size
        while (line := buf.take_line()) is not None:
            lines.append(line)
    assert lines == [b"ab\n", b"cdef\n", b"\n", b"gh\n"]
    assert len(buf) == 0
