"""A scripted run of the classroom's hub: deploy/start-hub.sh as an instructor runs it (JupyterHub,
DockerSpawner, configurable-http-proxy), two learners log in, start their servers and run a cell that
makes a labkit container through the proxy's websocket; then the hub stops and nothing is left.

The hub uses the stage's own dockerd (DOCKER_HOST), its own names (labkit-hubtest-..., a labkit-hub
bridge claimed for this test so that no sweep takes it meanwhile, a LABKIT-HUB- firewall chain), a
spare /24 and free loopback ports, so it can run beside a real rehearsal or other tests.
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from labkit import cleanup
from tests.classroom import hub, learners
from tests.classroom.conftest import PROJECT, TIMINGS, hub_env
from tests.classroom.daemon import say

pytestmark = pytest.mark.root

CELL = """
from labkit import container
r = container.run("busybox", ["sh", "-c", "echo pid=$$ host=$(hostname)"], hostname="hubtest")
print("labkit container:", r.returncode, r.stdout.strip())
"""
OUT = Path(os.environ.get("TEST_OUTPUT", PROJECT / "test-output"))


def spare_subnet() -> str:
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    for third in range(200, 250):
        if f"172.30.{third}." not in routes:
            return f"172.30.{third}.0/24"
    raise RuntimeError("no spare 172.30.N.0/24 on this host")


def session_pids(sid: int) -> list[int]:
    found = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid:
                found.append(pid)
        except OSError:
            continue
    return found


def test_two_learners_log_in_run_a_labkit_cell_and_the_stopped_hub_leaves_nothing(daemon, lab_image):
    tag = secrets.token_hex(2)
    prefix, bridge, chain = f"labkit-hubtest-{tag}", f"labkit-hub{tag}", f"LABKIT-HUB-{tag.upper()}"
    network, subnet = f"{prefix}-net", spare_subnet()
    gateway = subnet.rsplit(".", 1)[0] + ".1"
    port, api_port, password = hub.free_port(), hub.free_port(), secrets.token_hex(8)
    url = f"http://127.0.0.1:{port}"
    state = tempfile.mkdtemp(prefix="labkit-hubtest-")
    env = {**hub_env(), "DOCKER_HOST": daemon.host, "LABKIT_IMAGE": lab_image, "LABKIT_HUB_PASSWORD": password,
           "LABKIT_HUB_URL": url, "LABKIT_HUB_PROXY_API": f"http://127.0.0.1:{api_port}",
           "LABKIT_HUB_PREFIX": prefix, "LABKIT_HUB_NETWORK": network, "LABKIT_HUB_BRIDGE": bridge,
           "LABKIT_HUB_SUBNET": subnet, "LABKIT_HUB_CHAIN": chain, "LABKIT_HUB_STATE": state}
    OUT.mkdir(parents=True, exist_ok=True)
    cleanup.claim("link", bridge)
    log = open(OUT / "classroom-hub.log", "w")
    proc = subprocess.Popen(["bash", str(PROJECT / "deploy/start-hub.sh")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        hub.poll("the hub's API", lambda: hub.requests.get(f"{url}/hub/api/", timeout=5).ok, 120)
        say(f"hub up on {url} (learners' network {network}, {subnet}); alice and bob log in ...")

        # the hub and the proxy listen on loopback, the hub API also on the learners' gateway: nothing else
        listening = {c.laddr.ip for c in psutil.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in session_pids(proc.pid)}
        assert listening and listening <= {"127.0.0.1", gateway}, listening

        people = [hub.Learner(url, name, password) for name in ("alice", "bob")]
        t0 = time.monotonic()
        for person in people:
            person.log_in()
            person.start_server()
        for person in people:
            hub.poll(f"{person.name}'s server", person.server_ready, 240)
        TIMINGS["2 logins to ready s"] = time.monotonic() - t0

        for person in people:
            name = f"{prefix}-learner-{person.name}"
            cid = daemon.docker("inspect", "-f", "{{.Id}}", name).stdout.strip()
            limits = {d.parent.parent.name: d for d in learners.cgroup_dirs(cid)}
            assert int((limits["memory"] / "memory.limit_in_bytes").read_text()) == 2 * 2**30      # LABKIT_LEARNER_MEMORY=2G
            assert (limits["pids"] / "pids.max").read_text().strip() == "2048"
            TIMINGS[f"idle {person.name} MiB"] = learners.memory_of(cid)["now"] / 2**20
            routes = hub.poll(f"{person.name} without a default route",
                              lambda: (r := daemon.docker("exec", name, "ip", "-4", "route").stdout)
                              and "default" not in r and r, 30)
            assert gateway.rsplit(".", 1)[0] in routes

        for person in people:
            status, out = person.run_cell(CELL)
            say(f"{person.name}'s cell: {status}: {out.strip()}")
            # exit 0, its own hostname, and a pid from a fresh pid namespace (1, or 2 under labkit's init)
            found = re.search(r"labkit container: 0 pid=(\d+) host=hubtest", out)
            assert status == "ok" and found and int(found[1]) <= 2, out
    finally:
        # Ctrl-C's equivalent for the hub: it stops every learner's server; start-hub.sh then removes
        # the network and the firewall rules
        hub_procs = [p for p in psutil.Process(proc.pid).children() if "jupyterhub" in " ".join(p.cmdline())] \
            if proc.poll() is None else []
        for p in hub_procs:
            p.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        cleanup.release("link", bridge)

    assert not session_pids(proc.pid), "processes of the hub's session are still running"
    assert not daemon.docker("ps", "-aq", "--filter", f"name={prefix}").stdout.split(), "learner containers left"
    assert not daemon.docker("network", "ls", "-q", "--filter", f"name={network}").stdout.split()
    assert not Path(f"/sys/class/net/{bridge}").exists(), f"the bridge {bridge} is left"
    assert subprocess.run(["iptables", "-S", chain], capture_output=True).returncode != 0, f"chain {chain} left"
    assert bridge not in subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
    # the learners' volumes stay by design (their work survives the hub); the class's last step removes them
    volumes = daemon.docker("volume", "ls", "-q", "--filter", f"name={prefix}").stdout.split()
    assert len(volumes) == 6, volumes
    daemon.docker("volume", "rm", *volumes)
    assert not daemon.docker("volume", "ls", "-q", "--filter", f"name={prefix}").stdout.split()
    subprocess.run(["rm", "-rf", "--one-file-system", state], check=True)
