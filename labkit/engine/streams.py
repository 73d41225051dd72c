"""Docker's multiplexed stream format: stdout and stderr interleaved on one connection.

When a container has no terminal (``Tty: false``), /logs and /attach send its output as frames.
Each frame is an 8-byte header followed by the payload::

    [STREAM, 0, 0, 0, SIZE1, SIZE2, SIZE3, SIZE4]   payload (SIZE bytes)

STREAM is 0 (stdin), 1 (stdout) or 2 (stderr); SIZE is the payload length as a big-endian 32-bit
integer. The docker CLI (its ``stdcopy`` package) and the docker SDK split the frames apart again
and write each payload to the right file descriptor. With a terminal there is only one stream, so
the bytes go raw (``application/vnd.docker.raw-stream``).
"""
from __future__ import annotations

import struct

STDIN, STDOUT, STDERR = 0, 1, 2
NAMES = {STDIN: "stdin", STDOUT: "stdout", STDERR: "stderr"}
HEADER = struct.Struct(">BxxxL")        # stream byte, three zero bytes, big-endian uint32 size
MAX_FRAME = 0xFFFFFFFF

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"


def frame(stream: int, payload: bytes) -> bytes:
    """One frame: header + payload."""
    if stream not in NAMES:
        raise ValueError(f"invalid stream {stream!r}: expected 0 (stdin), 1 (stdout) or 2 (stderr)")
    if len(payload) > MAX_FRAME:
        raise ValueError(f"payload of {len(payload)} bytes does not fit in one frame (max {MAX_FRAME})")
    return HEADER.pack(stream, len(payload)) + payload


class Demuxer:
    """Split a multiplexed byte stream into (stream, payload) frames, fed in arbitrary pieces.

    Network reads cut frames anywhere, even inside the 8-byte header, so bytes are buffered until a
    whole frame is there.
    """

    def __init__(self):
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            stream, size = HEADER.unpack_from(self._buffer)
            if stream not in NAMES or self._buffer[1:4] != b"\0\0\0":
                raise ValueError(f"not a multiplexed stream: header {bytes(self._buffer[:8]).hex()}")
            if len(self._buffer) < HEADER.size + size:
                break
            frames.append((stream, bytes(self._buffer[HEADER.size:HEADER.size + size])))
            del self._buffer[:HEADER.size + size]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still waiting for the rest."""
        return len(self._buffer)


def demux(data: bytes) -> list[tuple[int, bytes]]:
    """All frames of a complete multiplexed body; a truncated last frame is an error."""
    demuxer = Demuxer()
    frames = demuxer.feed(data)
    if demuxer.pending:
        raise ValueError(f"multiplexed stream ends inside a frame ({demuxer.pending} bytes left over)")
    return frames


def split(data: bytes) -> tuple[bytes, bytes]:
    """(stdout, stderr) of a complete multiplexed body."""
    out, err = bytearray(), bytearray()
    for stream, payload in demux(data):
        (err if stream == STDERR else out).extend(payload)
    return bytes(out), bytes(err)
