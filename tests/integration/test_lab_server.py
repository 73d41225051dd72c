"""JupyterLab started the way `make lab` starts it (labkit.lab.start): token required, loopback only,
and a notebook really executed through the running server; stopped afterwards with nothing left.

The server gets its own config and run directories (so a learner's running lab is not touched) and
port 8888 when free, else a free port: the code path is the same as `labkit lab start`.
"""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
import uuid

import nbformat
import psutil
import pytest

from labkit import lab

pytestmark = pytest.mark.root


def _free_port(preferred: int = 8888) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


NOTEBOOK_CELLS = [
    "import os, labkit.host\nmode = labkit.host.cgroup_mode()",
    "print('cgroup mode is', mode in ('v1', 'hybrid', 'v2'))",
    "print(sum(range(10)))",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    notebooks = root / "notebooks"
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in NOTEBOOK_CELLS]
    nbformat.write(nb, notebooks / "check.ipynb")
    settings = lab.LabSettings(port=_free_port(), notebook_dir=str(notebooks),
                               config_dir=str(root / "etc"), run_dir=str(root / "run"))
    result = lab.start(settings, mode="direct")
    assert result["started"] and result["running"] and result["answers"]
    server_proc = psutil.Process(result["pid"])
    yield settings, server_proc
    family = [server_proc] + server_proc.children(recursive=True)
    assert lab.stop(settings) is True
    still = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert still == [], f"processes left after stop: {still}"
    assert not settings.pid_file.exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", settings.port)) != 0, "port still answers after stop"


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    """(status, Location header) without following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    headers = {"Authorization": f"token {token}"} if token else {}
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status, response.headers.get("Location", "")
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Location", "")


def _api(settings, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {lab.token(settings)}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else {}


def test_answers_with_the_token_and_refuses_without(server):
    settings, _ = server
    base = f"http://127.0.0.1:{settings.port}"
    assert _get(f"{base}/api/contents", lab.token(settings))[0] == 200
    assert _get(f"{base}/api/contents")[0] == 403
    assert _get(f"{base}/api/contents", "0" * 48)[0] == 403
    status, location = _get(f"{base}/lab")
    assert status == 302 and "/login" in location
    assert _get(f"{base}/lab?token={lab.token(settings)}")[0] == 200
    assert lab.url(settings).startswith(f"http://127.0.0.1:{settings.port}/lab?token=")


def test_token_file_is_readable_by_root_only(server):
    settings, _ = server
    assert settings.token_file.stat().st_mode & 0o077 == 0
    assert len(lab.token(settings)) >= 32


def test_listens_on_loopback_only(server):
    settings, server_proc = server
    pids = {server_proc.pid} | {p.pid for p in server_proc.children(recursive=True)}
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.pid in pids and c.status == psutil.CONN_LISTEN]
    on_port = [c for c in listening if c.laddr.port == settings.port]
    assert on_port, "the server does not listen on its port"
    assert {c.laddr.ip for c in on_port} == {"127.0.0.1"}
    # From the outside: the machine's other addresses refuse the port.
    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for address in others:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, settings.port)) != 0, f"answers on {address}"


def _execute(ws, session_id: str, code: str) -> list[dict]:
    """Send one execute_request over the kernel's websocket; return its iopub messages until idle."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": session_id,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True,
                    "user_expressions": {}, "allow_stdin": False}}))
    replies = []
    while True:
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        replies.append(msg)
        if msg["channel"] == "iopub" and msg["msg_type"] == "status" \
                and msg["content"]["execution_state"] == "idle":
            return replies


def test_executes_a_notebook_through_the_server(server):
    import websocket

    settings, server_proc = server
    model = _api(settings, "GET", "/api/contents/check.ipynb")          # the notebook the server serves
    cells = [c["source"] for c in model["content"]["cells"] if c["cell_type"] == "code"]
    assert cells == NOTEBOOK_CELLS
    session = _api(settings, "POST", "/api/sessions",
                   {"path": "check.ipynb", "type": "notebook", "kernel": {"name": "python3"}})
    kernel_id = session["kernel"]["id"]
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{settings.port}/api/kernels/{kernel_id}/channels?session_id={session['id']}",
        header=[f"Authorization: token {lab.token(settings)}"], timeout=60)
    try:
        outputs = []
        for code in cells:
            msgs = _execute(ws, session["id"], code)
            errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
            assert not errors, f"cell failed: {code!r}: {errors}"
            outputs.append("".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream"))
        assert outputs == ["", "cgroup mode is True\n", "45\n"]
        # The kernel is a child of the server: it runs where the lab runs.
        kernel_pids = [p.pid for p in server_proc.children(recursive=True)]
        assert kernel_pids, "no kernel process under the server"
    finally:
        ws.close()
    _api(settings, "DELETE", f"/api/sessions/{session['id']}")
    assert kernel_id not in {k["id"] for k in _api(settings, "GET", "/api/kernels")}


def test_start_again_leaves_the_running_server(server):
    settings, server_proc = server
    again = lab.start(lab.LabSettings(port=settings.port, notebook_dir=settings.notebook_dir,
                                      config_dir=settings.config_dir, run_dir=settings.run_dir),
                      mode="direct")
    assert again["started"] is False and again["pid"] == server_proc.pid


def _v2_root():
    from pathlib import Path

    from labkit import host

    mode = host.cgroup_mode()
    if mode == "v2":
        return Path("/sys/fs/cgroup")
    if mode == "hybrid":
        return Path("/sys/fs/cgroup/unified")
    return None


@pytest.mark.skipif(_v2_root() is None, reason="no cgroup v2 hierarchy on this host")
def test_delegated_layout_on_the_real_v2_hierarchy():
    """What `labkit lab serve` does under systemd's Delegate=yes, on the kernel's own cgroupfs: a
    process in the 'service' cgroup moves itself into the `jupyter` leaf, `labkit` is made beside it,
    and the service cgroup is left without processes (v2's no-internal-process rule)."""
    import subprocess
    import sys

    from labkit import cleanup

    root = _v2_root()
    name = cleanup.unique_name("labsvc")
    cleanup.claim("cgroup", name)
    service = root / name
    service.mkdir()
    try:
        child = (
            "import sys; from pathlib import Path; from labkit import lab\n"
            "Path(sys.argv[1], sys.argv[2], 'cgroup.procs').write_text('0')\n"   # 'the service'
            "print(lab.delegated_layout(Path(sys.argv[1]), '/' + sys.argv[2]))\n"
            "print([l for l in open('/proc/self/cgroup') if l.startswith('0::')][0].strip())\n")
        out = subprocess.run([sys.executable, "-c", child, str(root), name],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        parent, own = out.stdout.split()
        assert parent == f"{name}/labkit"
        assert own == f"0::/{name}/jupyter"                   # the kernel put it in the leaf
        assert (service / "labkit").is_dir()
        assert (service / "cgroup.procs").read_text() == ""   # no process left in the service cgroup
        available = set((service / "cgroup.controllers").read_text().split())
        wanted = [c for c in ("cpuset", "cpu", "io", "memory", "pids") if c in available]
        assert (service / "cgroup.subtree_control").read_text().split() == wanted
    finally:
        for leaf in ("jupyter", "labkit"):
            if (service / leaf).exists():
                (service / leaf).rmdir()
        service.rmdir()
        cleanup.release("cgroup", name)


def test_a_server_that_does_not_answer_in_time_is_stopped_not_left_running(tmp_path, monkeypatch):
    """lab.start gives up when the server does not answer on its port within START_TIMEOUT (here 0.3 s,
    too short for any JupyterLab): the server it started must be gone then, not left holding a port."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    settings = lab.LabSettings(port=_free_port(0), notebook_dir=str(notebooks),
                               config_dir=str(tmp_path / "etc"), run_dir=str(tmp_path / "run"))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    monkeypatch.setattr(lab, "START_TIMEOUT", 0.3)
    with pytest.raises(lab.LabkitError, match="did not answer"):
        lab.start(settings, mode="direct")
    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert [p.pid for p in started if p.status() != psutil.STATUS_ZOMBIE] == []
    assert not settings.pid_file.exists()
