"""JupyterLab for the lab: where it runs, with which token, and how to start and stop it.

`make lab` (through vagrant/provision.sh) calls `labkit lab start`. Two ways to run it:

* **systemd** (PID 1 is systemd: the Vagrant VM, a cloud VM): a root service, `deep-dive-lab.service`,
  with `Delegate=yes`. systemd then hands the service's cgroup subtree to us, and we keep its rule
  that a cgroup holds processes *or* children, never both (cgroup v2's "no internal processes"):

      /sys/fs/cgroup/system.slice/deep-dive-lab.service/     <- delegated to us, holds no process
          jupyter/                                           <- JupyterLab and its kernels (a leaf)
          labkit/                                            <- LABKIT_CGROUP_PARENT: labkit's cgroups

  `labkit lab serve` (the unit's ExecStart) moves itself into `jupyter/`, enables the controllers
  for the children, sets LABKIT_CGROUP_PARENT, then execs JupyterLab. Notebook kernels inherit both,
  so every cgroup a notebook creates lands under `labkit/`, which systemd will never touch.
* **direct** (no systemd, like the CI machine): `labkit lab start` runs `labkit lab serve` as a
  background process in its own session, with a pid file and a log under /run/labkit/lab.

The token is made once and kept in /etc/labkit/jupyter-token (mode 0600), so the URL stays valid
across restarts; JupyterLab reads it from the environment (JUPYTER_TOKEN), never from its command
line, where any user could read it in `ps`.
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import host
from .errors import InvalidValue, LabkitError, NotFound

SERVICE = "deep-dive-lab.service"
UNIT_PATH = Path("/etc/systemd/system") / SERVICE
CONFIG_DIR = Path(os.environ.get("LABKIT_CONFIG_DIR", "/etc/labkit"))
RUN_DIR = Path(os.environ.get("LABKIT_LAB_RUN_DIR", "/run/labkit/lab"))
REPO = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 8888
START_TIMEOUT = 90.0      # seconds for JupyterLab to answer (a cold start on a 2-core VM takes ~5 s)


@dataclass
class LabSettings:
    """Where JupyterLab listens and what it serves; kept in CONFIG_DIR/lab.json between runs."""

    ip: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    notebook_dir: str = str(REPO / "notebooks")
    config_dir: str = field(default=str(CONFIG_DIR), compare=False)
    run_dir: str = field(default=str(RUN_DIR), compare=False)

    # -- files --
    @property
    def settings_file(self) -> Path:
        return Path(self.config_dir) / "lab.json"

    @property
    def token_file(self) -> Path:
        return Path(self.config_dir) / "jupyter-token"

    @property
    def pid_file(self) -> Path:
        return Path(self.run_dir) / "jupyter.pid"

    @property
    def log_file(self) -> Path:
        return Path(self.run_dir) / "jupyter.log"

    def validate(self) -> "LabSettings":
        """Check every value before anything is started or written."""
        try:
            ipaddress.ip_address(self.ip)
        except ValueError:
            raise InvalidValue("ip", self.ip, "an IP address, e.g. 127.0.0.1 (or 0.0.0.0 inside a VM)")
        try:
            port = int(self.port)
        except (TypeError, ValueError):
            port = -1
        if not 1 <= port <= 65535:
            raise InvalidValue("port", self.port, "1..65535")
        self.port = port
        if not Path(self.notebook_dir).is_dir():
            raise InvalidValue("notebook dir", self.notebook_dir, "an existing directory")
        self.notebook_dir = str(Path(self.notebook_dir).resolve())
        return self

    def save(self) -> None:
        Path(self.config_dir).mkdir(parents=True, exist_ok=True)
        data = {"ip": self.ip, "port": self.port, "notebook_dir": self.notebook_dir}
        self.settings_file.write_text(json.dumps(data, indent=2) + "\n")


def load_settings(config_dir: str | Path = CONFIG_DIR, run_dir: str | Path = RUN_DIR,
                  **overrides) -> LabSettings:
    """The saved settings (or defaults), with any non-None override applied."""
    settings = LabSettings(config_dir=str(config_dir), run_dir=str(run_dir))
    try:
        saved = json.loads(settings.settings_file.read_text())
    except (OSError, ValueError):
        saved = {}
    for key in ("ip", "port", "notebook_dir"):
        if overrides.get(key) is not None:
            setattr(settings, key, overrides[key])
        elif key in saved:
            setattr(settings, key, saved[key])
    return settings


def token(settings: LabSettings, create: bool = False) -> str:
    """The server's token; made once (48 hex digits) and readable by root only."""
    path = settings.token_file
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    if not create:
        raise NotFound(f"no JupyterLab token yet ({path}): start the lab with `make lab`")
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def url(settings: LabSettings, with_token: bool = True) -> str:
    """The address to open in a browser. A server bound to 0.0.0.0 (inside a VM) is reached through
    the port forward on the host's 127.0.0.1, so the URL always names 127.0.0.1."""
    host = "127.0.0.1" if settings.ip in ("0.0.0.0", "127.0.0.1") else settings.ip
    if ":" in host:
        host = f"[{host}]"
    base = f"http://{host}:{settings.port}/lab"
    return f"{base}?token={token(settings)}" if with_token else base


def uses_systemd() -> bool:
    """True when PID 1 is systemd (the test systemd itself uses: sd_booted())."""
    return os.path.isdir("/run/systemd/system") and shutil.which("systemctl") is not None


# --- answering -------------------------------------------------------------------------------------

def answers(settings: LabSettings, timeout: float = 2.0) -> bool:
    """Does a Jupyter server answer on the configured port, and accept our token?"""
    host = "127.0.0.1" if settings.ip == "0.0.0.0" else settings.ip
    if ":" in host:
        host = f"[{host}]"
    try:
        request = urllib.request.Request(f"http://{host}:{settings.port}/api/status",
                                         headers={"Authorization": f"token {token(settings)}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, NotFound):
        return False


# --- the process (direct mode) ---------------------------------------------------------------------

def _read_pid(settings: LabSettings) -> int | None:
    """The pid in the pid file if that process is still the server we started (not a reused pid)."""
    import psutil

    try:
        pid_text, started = settings.pid_file.read_text().split()
        proc = psutil.Process(int(pid_text))
        if abs(proc.create_time() - float(started)) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc.pid
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def running_settings(settings: LabSettings) -> dict | None:
    """The settings the running server was started with (recorded next to its pid file)."""
    try:
        return json.loads((Path(settings.run_dir) / "running.json").read_text())
    except (OSError, ValueError):
        return None


def served_by_systemd(settings: LabSettings) -> bool:
    """True when these settings are the service's: PID 1 is systemd and the unit serves this config
    directory. A lab with a config directory of its own (a test's) runs directly, beside the service."""
    if not (uses_systemd() and UNIT_PATH.exists()):
        return False
    return f"--config-dir {settings.config_dir} " in UNIT_PATH.read_text()


def status(settings: LabSettings) -> dict:
    """What is running: mode, pid, whether it answers, and whether it runs with these settings."""
    if served_by_systemd(settings):
        active = subprocess.run(["systemctl", "is-active", "--quiet", SERVICE]).returncode == 0
        active = active and UNIT_PATH.read_text() == render_unit(settings)   # else: rewrite, restart
        mode, pid = "systemd", None
    else:
        pid = _read_pid(settings)
        active, mode = pid is not None, "direct"
    current = running_settings(settings) if active else None
    wanted = {"ip": settings.ip, "port": settings.port, "notebook_dir": settings.notebook_dir}
    return {"mode": mode, "running": active, "pid": pid, "answers": active and answers(settings),
            "as_configured": active and current == wanted, "url": url(settings, with_token=False)}


def _wait_until_answering(settings: LabSettings, alive) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if answers(settings):
            return
        if not alive():
            break
        time.sleep(0.3)
    log = ""
    try:
        log = "\n".join(settings.log_file.read_text().splitlines()[-15:])
    except OSError:
        pass
    where = f"`journalctl -u {SERVICE}`" if uses_systemd() else str(settings.log_file)
    raise LabkitError(f"JupyterLab did not answer on {settings.ip}:{settings.port} "
                      f"(is the port taken? `labkit lab start --port N` picks another; log: {where})"
                      f"\n{log}")


def start(settings: LabSettings, mode: str = "auto") -> dict:
    """Start JupyterLab (or leave it running when it already runs with these settings)."""
    if mode not in ("auto", "systemd", "direct"):
        raise InvalidValue("mode", mode, "auto, systemd or direct")
    settings.validate()
    if mode == "auto":
        mode = "systemd" if uses_systemd() else "direct"
    token(settings, create=True)
    now = status(settings)
    if now["running"] and now["as_configured"] and now["answers"]:
        return {**now, "started": False}
    settings.save()
    if mode == "systemd":
        _start_systemd(settings)
    else:
        if now["running"]:
            stop(settings)
        _start_direct(settings)
    return {**status(settings), "started": True}


def _record_running(settings: LabSettings) -> None:
    Path(settings.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(settings.run_dir) / "running.json").write_text(json.dumps(
        {"ip": settings.ip, "port": settings.port, "notebook_dir": settings.notebook_dir}))


def _start_direct(settings: LabSettings) -> None:
    import psutil

    Path(settings.run_dir).mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "labkit.cli", "lab", "serve",
            "--config-dir", settings.config_dir, "--run-dir", settings.run_dir]
    with open(settings.log_file, "ab") as log:
        # A session of its own: the server outlives `make lab` and is not hit by its Ctrl-C.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=settings.notebook_dir)
    settings.pid_file.write_text(f"{proc.pid} {psutil.Process(proc.pid).create_time()}\n")
    try:
        _wait_until_answering(settings, alive=lambda: proc.poll() is None)
    except LabkitError:
        _stop_direct(settings, timeout=5)   # a server that never answered where asked: leave nothing
        proc.wait()
        raise


UNIT_TEMPLATE = """\
# Written by `labkit lab start` (vagrant/provision.sh). JupyterLab for Docker Deep Dive Lab.
[Unit]
Description=Docker Deep Dive Lab (JupyterLab, as root: the lab creates kernel objects)
After=network.target
# In a Vagrant VM the repository (labkit itself) is a synced folder that Vagrant mounts only after
# boot: keep retrying until it is there instead of giving up after five quick failures.
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart={python} -m labkit.cli lab serve --config-dir {config_dir} --run-dir {run_dir}
WorkingDirectory=-{notebook_dir}
Environment=HOME=/root
# The service's cgroup subtree is ours: labkit makes its cgroups under it (see labkit/lab.py).
Delegate=yes
# Stopping the lab stops everything in it: kernels and any experiment a notebook left running.
KillMode=control-group
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def render_unit(settings: LabSettings) -> str:
    """The systemd unit that runs this venv's `labkit lab serve` with these settings."""
    return UNIT_TEMPLATE.format(python=sys.executable, config_dir=settings.config_dir,
                                run_dir=settings.run_dir, notebook_dir=settings.notebook_dir)


def _start_systemd(settings: LabSettings) -> None:
    unit = render_unit(settings)
    changed = not UNIT_PATH.exists() or UNIT_PATH.read_text() != unit
    if changed:
        UNIT_PATH.write_text(unit)
        subprocess.run(["systemctl", "daemon-reload"], check=True)
    subprocess.run(["systemctl", "enable", "--quiet", SERVICE], check=True)
    subprocess.run(["systemctl", "restart", SERVICE], check=True)
    _wait_until_answering(settings, alive=lambda: subprocess.run(
        ["systemctl", "is-active", "--quiet", SERVICE]).returncode == 0)


def stop(settings: LabSettings, timeout: float = 20.0) -> bool:
    """Stop the server and everything it started (kernels). True if something was running."""
    if served_by_systemd(settings):
        was = subprocess.run(["systemctl", "is-active", "--quiet", SERVICE]).returncode == 0
        subprocess.run(["systemctl", "stop", SERVICE], check=True)
        return was
    return _stop_direct(settings, timeout)


def _stop_direct(settings: LabSettings, timeout: float) -> bool:
    import psutil

    pid = _read_pid(settings)
    if pid is None:
        settings.pid_file.unlink(missing_ok=True)
        return False
    server = psutil.Process(pid)
    family = [server] + server.children(recursive=True)   # kernels are the server's children
    server.send_signal(signal.SIGTERM)                     # JupyterLab shuts its kernels down
    _gone, alive = psutil.wait_procs(family, timeout=timeout)
    for proc in alive:                                     # only processes we started
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    settings.pid_file.unlink(missing_ok=True)
    (Path(settings.run_dir) / "running.json").unlink(missing_ok=True)
    return True


# --- serve: what the service (or the background process) runs --------------------------------------

V2_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")


def _own_v2_cgroup() -> str | None:
    """This process's cgroup on the unified (v2) hierarchy, e.g. /system.slice/deep-dive-lab.service."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return None


def _enter_leaf_cgroup() -> str | None:
    """On cgroup v2, where a subtree is ours: move JupyterLab into `jupyter/` and return where labkit's
    cgroups go (see `delegated_layout`). Two such places:

    * a systemd-delegated service (Delegate=yes): its cgroup; only this process moves;
    * a container with its own cgroup namespace (--cgroupns=private: a classroom's learner): the
      namespace's root, which is the container's cgroup on the host - every process in it moves,
      since they are all the container's.

    None elsewhere (v1 and hybrid hosts have no "no internal processes" rule; on a plain host the
    root cgroup is the kernel's, not ours; a unit without Delegate=yes keeps its cgroup as it is)."""
    if host.cgroup_mode() != "v2":
        return None
    own = _own_v2_cgroup()
    root = Path(host.CGROUP_ROOT)
    if os.environ.get("INVOCATION_ID") and own and own != "/":
        unit = own[: -len("/jupyter")] if own.endswith("/jupyter") else own
        # Only a cgroup systemd delegated to this unit is ours. Another unit's (a plain service, a test
        # runner systemd started) is systemd's, and its other processes would make the kernel refuse
        # the controllers (EBUSY) after we had moved ourselves into a jupyter/ we had no right to.
        if host.delegated_by(str(root / unit.lstrip("/"))) != unit:
            return None
        return delegated_layout(root, own)
    if own == "/" and container_cgroup_root(root):
        return delegated_layout(root, "/", move_all=True)
    return None


def container_cgroup_root(root: Path) -> bool:
    """Is the v2 root we see a cgroup namespace's root rather than the kernel's? Only a non-root
    cgroup has `cgroup.type` (and limits such as memory.max): the kernel's root has neither."""
    return (root / "cgroup.type").exists()


def delegated_layout(root: Path, own: str, move_all: bool = False) -> str:
    """Lay out the delegated cgroup `own` (relative to the v2 root `root`) as

        own/jupyter   this process (a leaf: v2 lets a cgroup hold processes or children, not both)
        own/labkit    labkit's cgroups, with the controllers enabled for them

    and return `own/labkit` for LABKIT_CGROUP_PARENT (relative to `root`). With move_all, every
    process in `own` moves into the leaf, not only this one (a container's processes)."""
    own = own.rstrip("/")
    if own.endswith("/jupyter"):                      # a restart that kept us in the leaf
        own = own[: -len("/jupyter")]
    base = root / own.lstrip("/")
    leaf = base / "jupyter"
    leaf.mkdir(exist_ok=True)
    (leaf / "cgroup.procs").write_text("0")           # "0" moves the writing process itself
    if move_all:
        _move_processes(base, leaf)
    available = set((base / "cgroup.controllers").read_text().split())
    wanted = " ".join("+" + c for c in V2_CONTROLLERS if c in available)
    labkit_dir = base / "labkit"
    labkit_dir.mkdir(exist_ok=True)
    if wanted:                                        # only now that `base` holds no process
        (base / "cgroup.subtree_control").write_text(wanted)
        (labkit_dir / "cgroup.subtree_control").write_text(wanted)
    return "/".join(p for p in (own.strip("/"), "labkit") if p)


def _move_processes(source: Path, leaf: Path, rounds: int = 5) -> None:
    """Every process of `source` into `leaf`, one pid per write (as the kernel wants); a process that
    forks meanwhile leaves a child behind, so look again a few times."""
    for _ in range(rounds):
        pids = (source / "cgroup.procs").read_text().split()
        if not pids:
            return
        for pid in pids:
            try:
                (leaf / "cgroup.procs").write_text(pid)
            except ProcessLookupError:                # it exited meanwhile
                continue


def exec_in_leaf(argv: list[str]) -> None:
    """Exec `argv` after moving into the leaf (where there is one to move to), with
    LABKIT_CGROUP_PARENT set for every labkit it starts: `labkit lab leaf -- jupyterhub-singleuser ...`
    is a classroom learner's command (deploy/), so that JupyterHub's single-user server and its
    kernels get the same layout as `labkit lab serve`."""
    if not argv:
        raise InvalidValue("command", "", "the command to run in the leaf, after --")
    env = dict(os.environ)
    parent = _enter_leaf_cgroup()
    if parent:
        env["LABKIT_CGROUP_PARENT"] = parent
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


def serve(settings: LabSettings) -> None:
    """Exec JupyterLab in the foreground (the unit's ExecStart, or the direct mode's child)."""
    settings.validate()
    env = dict(os.environ)
    env["JUPYTER_TOKEN"] = token(settings, create=True)
    parent = _enter_leaf_cgroup()
    if parent:
        env["LABKIT_CGROUP_PARENT"] = parent
    argv = [sys.executable, "-m", "jupyterlab",
            f"--ip={settings.ip}", f"--port={settings.port}", "--port-retries=0",
            "--no-browser", "--allow-root", f"--ServerApp.root_dir={settings.notebook_dir}",
            # No calls out to the internet: the lab runs offline (provision.sh also installs
            # vagrant/jupyterlab-settings/overrides.json, which silences the "fetch news?" prompt).
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate"]
    _record_running(settings)        # what `labkit lab status` compares with (also after a reboot)
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)


def as_dict(settings: LabSettings) -> dict:
    return asdict(settings)
