"""One container as the engine sees it: its state, and its output kept line by line.

The engine (`state`) holds the lock; everything here is called with it held.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .spec import ContainerSpec

LOG_LIMIT = 8 * 1024 * 1024        # output bytes kept per container; older output is dropped
ATTACH_BUFFER = 64 * 1024          # --log-driver none: kept only for attached clients to catch up


@dataclass
class Record:
    """One container as the engine sees it."""

    id: str
    name: str
    spec: ContainerSpec
    image_id: str
    created: float = field(default_factory=time.time)
    status: str = "created"             # created | running | exited | removing
    pid: int = 0
    exit_code: int = 0
    oom_killed: bool = False
    error: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    starting: bool = False               # between start's request and the process running
    releasing: bool = False              # exited; its cgroup and mounts are being removed
    exits: int = 0                       # how many times it has exited (for next-exit waits)
    removed: bool = False
    log: list = field(default_factory=list)    # (time, stream, bytes)
    log_dropped: int = 0                       # entries dropped off the front (LOG_LIMIT)
    log_bytes: int = 0
    process: object = None                     # the runtime's handle while running
    kept_root: object = None                   # exited: its last run, whose writable layer stays until rm
    details: dict = field(default_factory=dict)  # namespaces, cgroup: what the runtime reports
    paused: bool = False                 # its cgroup is frozen (docker pause)
    restart_count: int = 0               # restarts by its restart policy
    manually_stopped: bool = False       # stop/kill by a client: the restart policy does not apply
    restarting: bool = False

    @property
    def running(self) -> bool:
        return self.status == "running"

    def store_output(self, stream: int, data: bytes) -> None:
        """Store output line by line, each with its time (as Docker's json-file driver does), so
        that --tail counts lines and --timestamps stamps each; a line's unfinished end is stored
        at once too (an interactive prompt must reach an attached terminal now)."""
        now = time.time()
        for line in data.splitlines(keepends=True):
            self.log.append((now, stream, line))
        self.log_bytes += len(data)
        limit = LOG_LIMIT if self.spec.log_driver != "none" else ATTACH_BUFFER
        while self.log_bytes > limit and len(self.log) > 1:
            self.log_bytes -= len(self.log.pop(0)[2])
            self.log_dropped += 1

    def output_start(self, replay: bool, tail: int | None) -> int:
        """Where a reader begins: the oldest entry kept (replay), its last `tail` lines, or only new output."""
        position = self.log_dropped if replay else self.log_dropped + len(self.log)
        if tail is not None and replay:
            position = max(position, self.log_dropped + len(self.log) - tail)
        return position

    def output_after(self, position: int) -> tuple[list, int]:
        """The entries logged from `position` on (counted since the first ever), and where the next read begins."""
        return self.log[max(position - self.log_dropped, 0):], self.log_dropped + len(self.log)
