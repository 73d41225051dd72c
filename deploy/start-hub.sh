#!/usr/bin/env bash
# Start the classroom's JupyterHub on this machine, in the foreground (Ctrl-C stops it, and with it
# every learner's container; their volumes stay). For a rehearsal: `make classroom`.
#
#   LABKIT_HUB_PASSWORD=... deploy/start-hub.sh [--install-only]
#
#   --install-only   only install the hub (deploy/.hub-venv: jupyterhub + dockerspawner from PyPI;
#                    deploy/.hub-node: configurable-http-proxy from npm), so that build-image.sh
#                    pins the image's jupyterhub to the same version
#
# LABKIT_HUB_VENV and LABKIT_HUB_NODE move those two directories (the classroom test caches them).
#
# It makes the learners' Docker network `classroom-net` (--internal: no route out through
# dockerd's NAT; bridge classroom0, gateway 172.30.0.1) and a firewall chain CLASSROOM-HUB
# that admits, from that bridge to this machine, only the hub's API port: learners can otherwise
# reach every host service listening on 0.0.0.0 through the bridge. Nothing from the bridge is
# forwarded either (our own FORWARD rule: it holds even under a dockerd run with --iptables=false),
# and each learner's default route is deleted at start (jupyterhub_config.py). All removed at exit.
# The settings are environment variables read by deploy/jupyterhub_config.py; LABKIT_HUB_BRIDGE,
# LABKIT_HUB_SUBNET (a /24), LABKIT_HUB_CHAIN and LABKIT_HUB_PORT move the network's names and the
# hub API's port, LABKIT_HUB_STATE the hub's database directory (the classroom test uses its own).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${LABKIT_HUB_VENV:-$HERE/.hub-venv} NODE=${LABKIT_HUB_NODE:-$HERE/.hub-node}
NETWORK=${LABKIT_HUB_NETWORK:-classroom-net}
BRIDGE=${LABKIT_HUB_BRIDGE:-classroom0} SUBNET=${LABKIT_HUB_SUBNET:-172.30.0.0/24}    # a /24
GATEWAY=${SUBNET%.*}.1 HUB_PORT=${LABKIT_HUB_PORT:-8081}
CHAIN=${LABKIT_HUB_CHAIN:-CLASSROOM-HUB}
say() { printf '[start-hub] %s\n' "$*"; }
die() { printf '[start-hub] ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root: it creates a Docker network and firewall rules"

if [ ! -x "$VENV/bin/jupyterhub" ]; then
    say "installing jupyterhub and dockerspawner into $VENV ..."
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --progress-bar off -q jupyterhub dockerspawner
fi
if [ ! -x "$NODE/bin/configurable-http-proxy" ]; then
    say "installing configurable-http-proxy into $NODE ..."
    npm install --silent --global --prefix "$NODE" configurable-http-proxy
fi
[ "${1:-}" = --install-only ] && { say "installed: jupyterhub $("$VENV/bin/jupyterhub" --version)"; exit 0; }
[ -n "${LABKIT_HUB_PASSWORD:-}" ] || die "set LABKIT_HUB_PASSWORD (the rehearsal's shared password)"
docker image inspect "${LABKIT_IMAGE:-deep-dive-lab:latest}" >/dev/null 2>&1 \
    || die "no image ${LABKIT_IMAGE:-deep-dive-lab:latest}: run deploy/build-image.sh first"

if ! docker network inspect "$NETWORK" >/dev/null 2>&1; then
    docker network create --internal --subnet "$SUBNET" --gateway "$GATEWAY" \
        -o com.docker.network.bridge.name="$BRIDGE" "$NETWORK" >/dev/null
    say "created the internal network $NETWORK ($BRIDGE, $SUBNET)"
fi
iptables -N "$CHAIN" 2>/dev/null || iptables -F "$CHAIN"
iptables -A "$CHAIN" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT    # the proxy's replies
iptables -A "$CHAIN" -p tcp -d "$GATEWAY" --dport "$HUB_PORT" -j ACCEPT      # the hub API
iptables -A "$CHAIN" -j DROP
iptables -C INPUT -i "$BRIDGE" -j "$CHAIN" 2>/dev/null || iptables -I INPUT -i "$BRIDGE" -j "$CHAIN"
for dir in -i -o; do
    iptables -C FORWARD "$dir" "$BRIDGE" -j DROP 2>/dev/null || iptables -I FORWARD "$dir" "$BRIDGE" -j DROP
done
stop() {
    iptables -D INPUT -i "$BRIDGE" -j "$CHAIN" 2>/dev/null || true
    iptables -D FORWARD -i "$BRIDGE" -j DROP 2>/dev/null || true
    iptables -D FORWARD -o "$BRIDGE" -j DROP 2>/dev/null || true
    if iptables -F "$CHAIN" 2>/dev/null; then iptables -X "$CHAIN" 2>/dev/null || true; fi
    docker network rm "$NETWORK" >/dev/null 2>&1 || say "network $NETWORK still in use: left in place"
}
trap stop EXIT

export LABKIT_HUB_IP=$GATEWAY LABKIT_HUB_PORT=$HUB_PORT LABKIT_HUB_NETWORK=$NETWORK PATH=$NODE/bin:$VENV/bin:$PATH
STATE=${LABKIT_HUB_STATE:-$HERE/.hub-state}
mkdir -p "$STATE"
cd "$STATE"                               # the hub's database and cookie secret live here
say "JupyterHub on ${LABKIT_HUB_URL:-http://127.0.0.1:8000} (Ctrl-C stops it)"
jupyterhub -f "$HERE/jupyterhub_config.py"
