"""The console protocol: qemu's stdout as lines, and the ``@@LABKIT:`` markers the guest prints."""
from __future__ import annotations

import re


MARK = "@@LABKIT:"


def parse_marker(line: str) -> tuple[str, str] | None:
    """('INFO', 'kernel=... cpus=...') for a marker line, None for ordinary output."""
    match = re.search(re.escape(MARK) + r"([A-Z-]+)@@ ?(.*)$", line)
    return (match.group(1), match.group(2).strip()) if match else None


def parse_info(text: str) -> dict:
    """'kernel=6.1.0 cpus=1 memtotal_kb=20000' -> {'kernel': '6.1.0', 'cpus': 1, 'memtotal_kb': 20000}."""
    info = {}
    for key, _, value in (item.partition("=") for item in text.split()):
        info[key] = int(value) if value.isdigit() else value
    return info


class ConsoleReader:
    """Turns the raw bytes of qemu's stdout into lines (the serial line adds \\r)."""

    def __init__(self):
        self._buffer = b""

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer, b""
        return [rest.decode("utf-8", "replace").rstrip("\r")] if rest.strip() else []
