"""Docker's multiplexed stream format and the HTTP framing the engine and the tracer share."""
from __future__ import annotations

import io

import pytest

from labkit.engine import streams, wire


def test_frame_header_is_stream_three_zeros_and_big_endian_size():
    data = streams.frame(streams.STDERR, b"hello\n")
    assert data[:8] == bytes([2, 0, 0, 0, 0, 0, 0, 6])
    assert data[8:] == b"hello\n"
    big = streams.frame(streams.STDOUT, b"x" * 0x010203)
    assert big[:8] == bytes([1, 0, 0, 0, 0x00, 0x01, 0x02, 0x03])


def test_frame_refuses_unknown_stream():
    with pytest.raises(ValueError, match="invalid stream 3"):
        streams.frame(3, b"x")


def test_demux_round_trip_keeps_order_and_streams():
    frames = [(1, b"out1\n"), (2, b"err1\n"), (1, b""), (1, b"out2\n")]
    body = b"".join(streams.frame(s, p) for s, p in frames)
    assert streams.demux(body) == frames
    assert streams.split(body) == (b"out1\nout2\n", b"err1\n")


@pytest.mark.parametrize("piece", [1, 3, 7, 8, 9, 1000])
def test_demuxer_reassembles_frames_cut_anywhere(piece):
    frames = [(1, b"a" * 20), (2, b"b" * 5), (1, b"c")]
    body = b"".join(streams.frame(s, p) for s, p in frames)
    demuxer, got = streams.Demuxer(), []
    for i in range(0, len(body), piece):
        got += demuxer.feed(body[i:i + piece])
    assert got == frames and demuxer.pending == 0


def test_demux_rejects_truncated_and_non_multiplexed_data():
    body = streams.frame(1, b"hello")
    with pytest.raises(ValueError, match="ends inside a frame"):
        streams.demux(body[:-1])
    with pytest.raises(ValueError, match="not a multiplexed stream"):
        streams.demux(b"hello world, plain text")


def test_chunked_encoding_round_trip():
    raw = wire.chunk(b"hello ") + wire.chunk(b"world") + wire.chunk(b"")
    assert raw.endswith(b"0\r\n\r\n")
    assert wire.unchunk(raw, "chunked") == b"hello world"
    reader = io.BufferedReader(io.BytesIO(raw))
    assert list(wire.iter_body(reader, "chunked", [], raw=True))[0] == b"6\r\nhello \r\n"
    assert wire.unchunk(raw[:7], "chunked") == b""          # cut mid-chunk: nothing invented


@pytest.mark.parametrize("headers, kwargs, expected", [
    ([("Content-Length", "5")], dict(is_request=True), "length"),
    ([], dict(is_request=True), "none"),
    ([("Transfer-Encoding", "chunked")], dict(is_request=False, status=200), "chunked"),
    ([], dict(is_request=False, status=200), "close"),
    ([("Content-Length", "2")], dict(is_request=False, status=200, method="HEAD"), "none"),
    ([], dict(is_request=False, status=204), "none"),
    ([("Upgrade", "tcp")], dict(is_request=False, status=101), "upgrade"),
])
def test_body_framing(headers, kwargs, expected):
    assert wire.body_framing(headers, **kwargs) == expected


def test_read_head_parses_request_line_and_headers():
    reader = io.BufferedReader(io.BytesIO(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\n"
                                          b"Content-Length: 2\r\n\r\n{}"))
    first, headers, raw = wire.read_head(reader)
    assert first == "POST /v1.41/containers/create HTTP/1.1"
    assert wire.header(headers, "content-length") == "2"
    assert raw.endswith(b"\r\n\r\n")
    assert wire.read_body(reader, "length", headers) == b"{}"
    assert wire.read_head(io.BufferedReader(io.BytesIO(b""))) is None
