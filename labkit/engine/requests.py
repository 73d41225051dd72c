"""What a request to the engine carries, checked before any handler runs: the API version in the
path, Docker's boolean query parameters, the body (bounded, plain or chunked) and its JSON.

A body is at most MAX_BODY bytes: a create request is a few KiB. A bigger one is refused with 413
as soon as that is known, and malformed framing with 400; both close the connection, since what
follows on it can no longer be trusted to be the next request.
"""
from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl, urlsplit

from . import wire

API_VERSION = "1.41"
MIN_API_VERSION = "1.24"
MAX_BODY = 1 << 20      # bytes; a create request is a few KiB, a bigger body is refused, never buffered
MAX_ARCHIVE = 64 << 20  # bytes of a tar archive for docker cp into a container
_VERSIONED = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")


class HTTPError(Exception):
    """An error answered with a status of our choosing (the rest is mapped from LabkitError)."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status = status
        self.close = close          # the connection is out of step: answer, then close it


def _version_tuple(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def split_target(target: str) -> tuple[str, dict, str | None]:
    """'/v1.41/containers/json?all=1' -> ('/containers/json', {'all': '1'}, '1.41').

    A version above ours or below the minimum is refused the way dockerd refuses it.
    """
    parts = urlsplit(target)
    path, version = parts.path, None
    match = _VERSIONED.match(path)
    if match:
        version = f"{match.group(1)}.{match.group(2)}"
        path = match.group(3)
        if _version_tuple(version) > _version_tuple(API_VERSION):
            raise HTTPError(400, f"client version {version} is too new. Maximum supported API version "
                                 f"is {API_VERSION}")
        if _version_tuple(version) < _version_tuple(MIN_API_VERSION):
            raise HTTPError(400, f"client version {version} is too old. Minimum supported API version "
                                 f"is {MIN_API_VERSION}, please upgrade your client to a newer version")
    return path, Query(parse_qsl(parts.query, keep_blank_values=True)), version


class Query(dict):
    """The query's parameters, the last value of each; `every(name)`: all of a repeated one, in order
    (`docker save a b` asks for ?names=a&names=b)."""

    def __init__(self, pairs: list[tuple[str, str]]):
        super().__init__(pairs)
        self.pairs = pairs

    def every(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]


def flag(query: dict, name: str, default: bool = False) -> bool:
    """Docker's boolean query parameters: 1/true/True/yes are true; absent is `default`."""
    if name not in query:
        return default
    return query[name].strip().lower() not in ("", "0", "false", "no")


def read_request_body(rfile, headers, limit: int = MAX_BODY) -> bytes:
    """The request's body, at most MAX_BODY bytes, plain or chunked. A bigger one is refused with
    413 as soon as it is known to be too big, without reading the rest, and the connection is
    closed after the answer (what follows on it is no longer a request). Malformed framing - a
    Content-Length that is not a number, both framings at once, a bad chunk size - is a 400, and
    closes the connection too."""
    encoding = wire.header(headers, "Transfer-Encoding").strip().lower()
    try:
        length = wire.content_length(headers)
    except ValueError as exc:
        raise HTTPError(400, str(exc), close=True) from None
    if encoding and (encoding != "chunked" or length is not None):
        raise HTTPError(400, f"malformed framing: Transfer-Encoding {encoding!r}"
                             + (" with a Content-Length" if length is not None else "")
                             + " (only chunked, alone)", close=True)
    if length is not None and length > limit:
        raise HTTPError(413, f"request body of {length} bytes is too large: at most {limit} bytes",
                        close=True)
    kept = bytearray()
    try:
        for piece in wire.iter_body(rfile, wire.body_framing(headers, is_request=True), headers):
            kept += piece
            if len(kept) > limit:
                raise HTTPError(413, f"chunked request body larger than {limit} bytes: refused",
                                close=True)
    except ValueError as exc:
        raise HTTPError(400, f"malformed chunked body: {exc}", close=True) from None
    return bytes(kept)


def parse_json_body(raw: bytes):
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"malformed JSON in the request body: {exc}") from None
