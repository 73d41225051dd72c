"""Driving the classroom's JupyterHub the way a learner's browser does, without a browser.

Login form (with its _xsrf field), the spawn, the single-user server's OAuth round trip through the
hub (requests follows the redirects and keeps the cookies), then the Jupyter kernel protocol over the
proxy's websocket: an execute_request on the shell channel, its output from iopub.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(what: str, check, timeout: float, interval: float = 0.5):
    """check() until it returns something true; its last error in the message if it never does."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (requests.RequestException, ValueError, KeyError) as e:
            last = e
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


class Learner:
    """One learner's browser session against the hub at `url` (http://127.0.0.1:PORT)."""

    def __init__(self, url: str, name: str, password: str):
        self.url, self.name, self.password = url, name, password
        self.session = requests.Session()
        self.base = f"{url}/user/{name}"

    def _xsrf(self, path: str) -> str:
        cookies = [c for c in self.session.cookies if c.name == "_xsrf" and path.startswith(c.path or "/")]
        return max(cookies, key=lambda c: len(c.path or "")).value

    def log_in(self) -> None:
        self.session.get(f"{self.url}/hub/login", timeout=30).raise_for_status()
        r = self.session.post(f"{self.url}/hub/login", timeout=60, data={
            "username": self.name, "password": self.password, "_xsrf": self._xsrf("/hub/login")})
        r.raise_for_status()
        if "/hub/login" in r.url:
            raise AssertionError(f"{self.name}: the hub refused the login")

    def start_server(self) -> None:
        self.session.get(f"{self.url}/hub/spawn/{self.name}", timeout=60).raise_for_status()

    def server_ready(self) -> dict:
        """The single-user server's /api/status, once its JupyterLab page loads through the proxy.

        The page, not the API, the first time: an API request without the server's cookie gets a
        403, a page gets the OAuth round trip through the hub that sets that cookie."""
        page = self.session.get(f"{self.base}/lab", timeout=30)
        if page.status_code != 200 or not page.url.startswith(f"{self.base}/lab"):
            return {}                                   # still the hub's spawn-pending page
        return self.session.get(f"{self.base}/api/status", timeout=30).json()

    def run_cell(self, code: str, timeout: float = 120) -> tuple[str, str]:
        """(status, stdout) of `code` run in a new kernel over the proxy's websocket; the kernel goes after."""
        self.session.get(f"{self.base}/lab", timeout=60)                     # sets the server's _xsrf cookie
        headers = {"X-XSRFToken": self._xsrf(f"/user/{self.name}/")}
        r = self.session.post(f"{self.base}/api/kernels", json={"name": "python3"}, headers=headers, timeout=60)
        r.raise_for_status()
        kernel = r.json()["id"]
        try:
            return asyncio.run(self._execute(kernel, code, timeout))
        finally:
            self.session.delete(f"{self.base}/api/kernels/{kernel}", headers=headers, timeout=60)

    async def _execute(self, kernel: str, code: str, timeout: float) -> tuple[str, str]:
        session_id = uuid.uuid4().hex
        ws_url = self.base.replace("http://", "ws://") + f"/api/kernels/{kernel}/channels?session_id={session_id}"
        cookie = "; ".join(f"{c.name}={c.value}" for c in self.session.cookies)
        ws = await websocket_connect(HTTPRequest(ws_url, headers={"Cookie": cookie}, connect_timeout=30))
        msg_id = uuid.uuid4().hex
        ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "username": self.name, "session": session_id,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        stdout, status, idle = [], None, False
        deadline = time.monotonic() + timeout
        while status is None or not idle:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no execute_reply within {timeout:.0f} s")
            raw = await asyncio.wait_for(ws.read_message(), left)
            if raw is None:
                raise ConnectionError(f"{self.name}: the kernel's websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                stdout.append(msg["content"]["text"])
            elif kind == "error":
                stdout.append("\n".join(msg["content"]["traceback"]))
            elif kind == "execute_reply":
                status = msg["content"]["status"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        ws.close()
        return status, "".join(stdout)
