"""JupyterHub for a classroom on ONE machine: one isolated lab container per learner (DockerSpawner).

Started by deploy/start-hub.sh (`make classroom`). Every knob an instructor may turn is an environment
variable read at the top; the rest is the isolation this lab needs and why.

Isolation is a choice (docs/instructor-guide.md, "Two ways to isolate learners"):
  LABKIT_RUNTIME=runc  a privileged runc container: the learner is root on the SHARED kernel. They can
                       crash the machine, read the kernel log, see (and detach) other learners' loop
                       devices. Fine for a class you trust, on a machine that holds nothing else.
  LABKIT_RUNTIME=kata  a Kata Containers microVM per learner (needs KVM and kata registered with
                       dockerd as runtime "kata"): each learner has their own kernel; root inside
                       is root of that VM only.
"""
import os

c = get_config()  # noqa: F821 - JupyterHub provides get_config() when it loads this file

IMAGE = os.environ.get("LABKIT_IMAGE", "deep-dive-lab:latest")        # deploy/build-image.sh's tag
RUNTIME = os.environ.get("LABKIT_RUNTIME", "runc")                  # the isolation choice: runc or kata
NETWORK = os.environ.get("LABKIT_HUB_NETWORK", "classroom-net")  # made --internal by start-hub.sh
HUB_IP = os.environ.get("LABKIT_HUB_IP", "172.30.0.1")              # that network's gateway (the host)
HUB_PORT = int(os.environ.get("LABKIT_HUB_PORT", "8081"))           # start-hub.sh admits only this port
PUBLIC_URL = os.environ.get("LABKIT_HUB_URL", "http://127.0.0.1:8000")
PROXY_API = os.environ.get("LABKIT_HUB_PROXY_API", "http://127.0.0.1:8001")
PREFIX = os.environ.get("LABKIT_HUB_PREFIX", "classroom")           # of learners' containers and volumes
CPUS = float(os.environ.get("LABKIT_LEARNER_CPUS", "1"))
MEMORY = os.environ.get("LABKIT_LEARNER_MEMORY", "2G")
PIDS = int(os.environ.get("LABKIT_LEARNER_PIDS", "2048"))
NOTEBOOKS = "/opt/labkit/notebooks"                                 # where the image has the workbook

if RUNTIME not in ("runc", "kata"):
    raise SystemExit(f"LABKIT_RUNTIME={RUNTIME!r}: accepted are 'runc' and 'kata'")

# --- the hub and the proxy ------------------------------------------------------------------------
# The proxy (the learners' URL) listens on loopback unless the instructor puts it behind TLS: either
# a reverse proxy of their own in front of 127.0.0.1:8000, or certificates given here.
c.JupyterHub.bind_url = PUBLIC_URL
if os.environ.get("LABKIT_HUB_TLS_CERT"):
    c.JupyterHub.ssl_cert = os.environ["LABKIT_HUB_TLS_CERT"]
    c.JupyterHub.ssl_key = os.environ["LABKIT_HUB_TLS_KEY"]
elif not PUBLIC_URL.startswith(("http://127.", "http://localhost", "http://[::1]")):
    raise SystemExit(f"LABKIT_HUB_URL={PUBLIC_URL} is not loopback: give LABKIT_HUB_TLS_CERT and "
                     "LABKIT_HUB_TLS_KEY, or keep it on 127.0.0.1 behind your own TLS proxy")
# The hub API listens only on the learners' network's gateway: the single-user servers must reach
# it, nobody else should (start-hub.sh's firewall admits only this port from that bridge).
c.JupyterHub.hub_ip = HUB_IP
c.JupyterHub.hub_port = HUB_PORT
c.JupyterHub.cleanup_servers = True
c.ConfigurableHTTPProxy.api_url = PROXY_API
if not PROXY_API.startswith(("http://127.", "http://localhost")):
    raise SystemExit(f"LABKIT_HUB_PROXY_API={PROXY_API}: the proxy's API stays on loopback")

# A rehearsal logs in with any name and one shared password; a real class uses the school's
# authenticator (OAuthenticator, LDAPAuthenticator, NativeAuthenticator) instead of these lines.
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = os.environ.get("LABKIT_HUB_PASSWORD") or None
c.Authenticator.allow_all = True
if not c.DummyAuthenticator.password:
    raise SystemExit("set LABKIT_HUB_PASSWORD (the rehearsal's shared password)")

# --- one lab container per learner ------------------------------------------------------------------
c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
c.DockerSpawner.image = IMAGE
# Not labkit-...: labkit's sweep removes Docker objects of that prefix whose owner is dead, and the
# hub's containers, volumes and image are not labkit's (the classroom test, whose daemon no sweep
# looks at, sets LABKIT_HUB_PREFIX=labkit-hubtest-...).
c.DockerSpawner.name_template = PREFIX + "-learner-{username}"
c.DockerSpawner.remove = True            # the container goes at stop; the learner's volumes stay
c.DockerSpawner.network_name = NETWORK
c.DockerSpawner.use_internal_ip = True
# An --internal Docker network still gives each container a default route (only dockerd's iptables
# rules, absent with --iptables=false, stop what uses it). The learner's server needs none: the hub
# API is on its own subnet. So the route goes at start; start-hub.sh's firewall drops the rest.
c.DockerSpawner.post_start_cmd = "ip route del default"
c.DockerSpawner.notebook_dir = NOTEBOOKS
c.DockerSpawner.default_url = "/lab/tree/00-welcome.ipynb"
# The image's jupyterhub is pinned to this hub's version (build-image.sh --jupyterhub-version); the
# server runs as root because labkit creates kernel objects.
# `labkit lab leaf` first: on a cgroup-v2 host it moves the container's processes into a `jupyter/`
# leaf and makes `labkit/` beside it for the notebooks' cgroups (v2 forbids processes and enabled
# children in one cgroup); elsewhere it only execs the server.
c.DockerSpawner.cmd = ["labkit", "lab", "leaf", "--", "jupyterhub-singleuser", "--allow-root"]
# Ten learners logging in at once on 2 cores took ~25 s to a ready JupyterLab: leave room.
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 120

# Per-learner volumes (named volumes start as a copy of the image's directory):
#   notebooks         their edits survive a restart of their container;
#   /var/lib/labkit   labkit's image store on a real filesystem: overlay accepts the 0:0 whiteout
#                     devices there (on the container's own overlay root it refuses them: notebook 31);
#   /var/lib/docker   Docker inside gets overlay2 instead of falling back to vfs.
c.DockerSpawner.volumes = {
    PREFIX + "-{username}-notebooks": NOTEBOOKS,
    PREFIX + "-{username}-store": "/var/lib/labkit",
    PREFIX + "-{username}-docker": "/var/lib/docker",
}

# Limits per learner, set by dockerd in the container's cgroup.
c.DockerSpawner.cpu_limit = CPUS
c.DockerSpawner.mem_limit = MEMORY
c.DockerSpawner.extra_host_config = {
    "pids_limit": PIDS,
    # labkit makes namespaces, cgroups, mounts and loop devices: that needs every capability and
    # device. Under kata, "privileged" applies inside the learner's VM (containerd/kata's
    # privileged_without_host_devices keeps the host's devices out).
    "privileged": True,
    # The learner's cgroup becomes their cgroup root: labkit's cgroups are made beneath it, and a
    # learner cannot see or touch another's.
    "cgroupns": "private",
}
# runc is dockerd's default runtime: nothing to set, so a daemon whose default is a runc wrapper
# (the classroom test's, tests/classroom/runc_capfit.py) uses it. kata must be named.
if RUNTIME == "kata":
    c.DockerSpawner.extra_host_config["runtime"] = "kata"
