"""Traffic inside lab namespaces: ICMP ping and TCP throughput, from sockets made in the namespace.

Sockets are made the way pyroute2 opens netlink in a namespace (`pyroute2.netns.create_socket`): a
forked child setns-es, creates the socket and hands it back, so this process never leaves its own.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import os
import random
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass

from ..errors import InvalidValue, KernelError, LabkitError, from_oserror
from .addresses import lab_ip
from .netlink import off_loop
from .netns import Namespace


def socket_in(ns: Namespace, kind: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace ns, returned to this process (which never leaves its own).

    pyroute2 forks a child that setns-es into ns, creates the socket and passes the descriptor back
    over a unix socket (SCM_RIGHTS). Close it: an open socket keeps its namespace alive.
    """
    from pyroute2 import netns

    if ns.is_host:
        raise InvalidValue("namespace", "host", "a lab namespace: labkit sends traffic only inside lab namespaces")
    try:
        return netns.create_socket(ns.path, socket.AF_INET, kind, proto, flags=0)
    except OSError as exc:
        raise from_oserror(exc, "create a socket in", ns.label) from None


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = b"labkit-ping") -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)             # type 8 = echo request
    return struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload


@off_loop
def ping(src: Namespace, addresses, timeout: float = 1.0) -> dict[str, bool]:
    """ICMP echo from inside `src` to each address (lab range only); {address: answered within timeout}.

    One raw ICMP socket made inside src sends all the requests, then collects echo replies that carry
    our identifier. "No route" errors count as unreachable, immediately.
    """
    targets = [lab_ip(a) for a in ([addresses] if isinstance(addresses, str) else addresses)]
    result = {t: False for t in targets}
    ident = random.randrange(1, 0xFFFF)
    sock = socket_in(src, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        pending = {}
        for seq, target in enumerate(targets, start=1):
            try:
                sock.sendto(echo_request(ident, seq), (target, 0))
                pending[seq] = target
            except OSError as exc:
                if exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES):
                    raise
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                packet, (sender, _) = sock.recvfrom(2048)
            except socket.timeout:
                break
            ihl = (packet[0] & 0x0F) * 4                            # raw sockets see the IP header too
            kind, _code, _sum, rid, rseq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
            if kind == 0 and rid == ident and pending.get(rseq) == sender:   # type 0 = echo reply
                result[pending.pop(rseq)] = True
    finally:
        sock.close()
    return result


@dataclass
class Throughput:
    path: str             # "veth+bridge" or "loopback"
    bytes: int
    seconds: float

    @property
    def gbit_per_s(self) -> float:
        return self.bytes * 8 / self.seconds / 1e9 if self.seconds else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.bytes / self.seconds / 2**20 if self.seconds else 0.0


def _in_child(fn, *args) -> tuple[int, int]:
    """Fork; the child runs fn(*args) and writes its JSON result to a pipe. Returns (pid, read end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # child: no threads, no event loop, just sockets
        status = 0
        try:
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            out = json.dumps({"ok": fn(*args)})
        except BaseException as exc:               # noqa: BLE001 - reported to the parent
            out, status = json.dumps({"error": repr(exc)}), 1
        try:
            os.write(w, out.encode())
        finally:
            os._exit(status)
    os.close(w)
    return pid, r


def _child_result(pid: int, fd: int, timeout: float):
    try:
        poller = select.poll()                     # (select.select fails on fds above 1023)
        poller.register(fd, select.POLLIN)
        data = b""
        if poller.poll(timeout * 1000):
            while chunk := os.read(fd, 65536):
                data += chunk
    finally:
        os.close(fd)
        try:
            os.kill(pid, signal.SIGKILL)           # harmless if it already exited; never waits forever
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    if not data:
        raise KernelError("throughput measurement", f"child {pid}", errno.ETIMEDOUT)
    answer = json.loads(data)
    if "error" in answer:
        raise LabkitError(f"throughput measurement failed in child: {answer['error']}")
    return answer["ok"]


def _receive(listener: socket.socket, timeout: float):
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    conn.settimeout(timeout)
    buf = bytearray(1 << 20)
    total, first, last = 0, None, None
    while n := conn.recv_into(buf):
        if first is None:
            first = time.perf_counter()
        total += n
        last = time.perf_counter()
    conn.close()
    return [total, (last - first) if first else 0.0]


def _send(client: socket.socket, address: tuple, seconds: float, max_bytes: int, timeout: float):
    client.settimeout(timeout)
    client.connect(address)
    chunk = b"\0" * (1 << 20)
    sent, end = 0, time.perf_counter() + seconds
    while sent < max_bytes and time.perf_counter() < end:
        sent += client.send(chunk[: max_bytes - sent])
    client.shutdown(socket.SHUT_WR)
    return sent


@off_loop
def measure_throughput(sender: Namespace, receiver: Namespace, address, seconds: float = 1.0,
                       max_bytes: int = 8 << 30, path: str | None = None) -> Throughput:
    """TCP from a socket in `sender` to a listener on `address` in `receiver`, for `seconds` or `max_bytes`.

    Both sockets are created inside their lab namespaces; sender and receiver then run in two forked
    children (so they do not share a GIL), and the receiver reports bytes and time from first to
    last byte. Bounded: at most `max_bytes`, and every wait has a timeout.
    """
    if not 0.05 <= seconds <= 10:
        raise InvalidValue("seconds", seconds, "0.05 to 10")
    if not 1 <= max_bytes <= 64 << 30:
        raise InvalidValue("max_bytes", max_bytes, "1 byte to 64 GiB")
    ip = lab_ip(address)
    timeout = seconds + 5
    listener = socket_in(receiver)
    client = socket_in(sender)
    rx = tx = None
    try:
        listener.bind((ip, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        rx = _in_child(_receive, listener, timeout)
        tx = _in_child(_send, client, (ip, port), seconds, max_bytes, timeout)
    finally:
        listener.close()                           # the children hold their own copies
        client.close()
    try:
        if tx:
            _child_result(*tx, timeout=timeout)
    finally:
        if rx:                                     # always reaped, even if the sender failed
            total, elapsed = _child_result(*rx, timeout=timeout)
    label = path or ("loopback" if ipaddress.IPv4Address(ip).is_loopback else "veth+bridge")
    return Throughput(label, total, elapsed)
