#!/usr/bin/env bash
# Provision a Docker Deep Dive Lab host: the ONE script behind `make lab`, `make test`, `vagrant up`
# and cloud-init. Debian 12 and 13, Ubuntu 24.04, amd64 and arm64. Idempotent: every step first checks
# whether it is already right, and a second run ends with "nothing changed".
#
#   vagrant/provision.sh [--test-tools] [--lab] [--ip ADDR] [--port N]
#   vagrant/provision.sh --container
#
#   --test-tools   also install what `make test` needs (packages tagged `test` in packages.txt, and
#                  pyproject.toml's `test` extra: pytest, nbval, playwright, the docker SDK)
#   --lab          start JupyterLab (a systemd service where PID 1 is systemd, else a background
#                  process) and print its URL with the token
#   --ip, --port   where JupyterLab listens (default 127.0.0.1:8888; the Vagrant VM uses 0.0.0.0 so
#                  that the NAT port forward, bound to the HOST's 127.0.0.1 only, can reach it)
#   --container    provision a classroom image (deploy/build-image.sh runs this in a chroot): no lab
#                  is started and no unit installed (JupyterHub starts each learner's server), no
#                  test tools, and the guest kernel's modules pruned to the fifteen the microVM loads
#
# Environment: LABKIT_REPO (default: this script's repository), LABKIT_VENV (default: $REPO/.venv),
# LABKIT_PYTHON (the Python to build the venv from; default: python3 on PATH if >= 3.11, else
# /usr/bin/python3).
set -euo pipefail

# Vagrant uploads this script to /tmp before running it, so the repository comes from LABKIT_REPO
# there, and from this script's location everywhere else.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${LABKIT_REPO:-$(cd "$HERE/.." && pwd)}
VENV=${LABKIT_VENV:-$REPO/.venv}
MARKER=/etc/labkit/lab-host
PACKAGES_FILE=$REPO/vagrant/packages.txt

TEST_TOOLS=0
START_LAB=0
CONTAINER=0
LAB_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --test-tools) TEST_TOOLS=1 ;;
        --lab) START_LAB=1 ;;
        --container) CONTAINER=1 ;;
        --ip|--port)
            [ $# -ge 2 ] || { echo "provision: $1 needs a value" >&2; exit 2; }
            LAB_ARGS+=("$1" "$2"); shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "provision: unknown option '$1' (accepted: --test-tools --lab --ip ADDR --port N --container)" >&2
           exit 2 ;;
    esac
    shift
done

CHANGES=()
say()     { printf '[provision] %s\n' "$*"; }
changed() { CHANGES+=("$1"); say "changed: $1"; }
die()     { printf '[provision] ERROR: %s\n' "$*" >&2; exit 1; }

if [ "$CONTAINER" = 1 ] && { [ "$START_LAB" = 1 ] || [ "$TEST_TOOLS" = 1 ]; }; then
    echo "provision: --container builds an image: --lab and --test-tools do not apply to it" >&2
    exit 2
fi
[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0): it installs packages and writes $MARKER"
[ -f "$PACKAGES_FILE" ] || die "missing $PACKAGES_FILE (set LABKIT_REPO to the repository)"

# --- 1. where are we -----------------------------------------------------------------------------
# shellcheck source=/dev/null
. /etc/os-release
DISTRO=${ID:-unknown}
ARCH=$(dpkg --print-architecture)
case "$DISTRO $VERSION_ID" in
    "debian 12"|"debian 13"|"ubuntu 24.04") ;;
    *) say "warning: tested on Debian 12, Debian 13 and Ubuntu 24.04, this is $DISTRO $VERSION_ID: trying anyway" ;;
esac
case "$ARCH" in
    amd64|arm64) ;;
    *) say "warning: tested on amd64 and arm64, this is $ARCH: trying anyway" ;;
esac
say "host: $DISTRO $VERSION_ID $ARCH, repo $REPO, venv $VENV"

# --- 2. system packages ----------------------------------------------------------------------------
# A package is wanted when all its tags match this machine; it is missing when dpkg says it is not
# installed. apt-get update runs only when something is missing.
have_kernel() { compgen -G '/boot/vmlinuz-*' >/dev/null; }

wanted_packages() {
    local pkg tags tag ok
    while read -r pkg tags; do
        case "$pkg" in ''|'#'*) continue ;; esac
        ok=1
        for tag in $tags; do
            case "$tag" in
                amd64|arm64) [ "$tag" = "$ARCH" ] || ok=0 ;;
                debian|ubuntu) [ "$tag" = "$DISTRO" ] || ok=0 ;;
                test) [ "$TEST_TOOLS" = 1 ] || ok=0 ;;
                kernel|if-shipped) ;;   # handled below
                *) die "packages.txt: unknown tag '$tag' on '$pkg' (accepted: amd64 arm64 debian ubuntu test kernel if-shipped)" ;;
            esac
        done
        if [ "$ok" = 1 ]; then printf '%s %s\n' "$pkg" "$tags"; fi
    done < "$PACKAGES_FILE"
}
wanted_packages > /dev/null      # a bad tag stops us here, not inside a subshell below

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

has_candidate() {   # the configured archives offer the package
    local candidate
    candidate=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

MISSING=()
KERNEL_PKGS=()
IF_SHIPPED=()    # not offered by the archives as they are now: looked at again after an apt-get update
while read -r pkg tags; do
    is_installed "$pkg" && continue
    if [[ " $tags " == *" if-shipped "* ]] && ! has_candidate "$pkg"; then
        IF_SHIPPED+=("$pkg")
        continue
    fi
    if [[ " $tags " == *" kernel "* ]]; then
        have_kernel && continue
        KERNEL_PKGS+=("$pkg")
    fi
    MISSING+=("$pkg")
done < <(wanted_packages)

apt_install() {
    # Non-interactive, keep existing config files, no recommends (they double the download: docker
    # recommends git and apparmor, vagrant recommends the whole libvirt plugin, qemu a GUI).
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a NEEDRESTART_SUSPEND=1 INITRD=No \
        apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=600 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        -o Dpkg::Use-Pty=0 "$@"
}

if [ ${#MISSING[@]} -eq 0 ]; then
    say "system packages: all $(wanted_packages | wc -l) present"
else
    say "system packages: ${#MISSING[@]} missing: ${MISSING[*]}"
    say "apt-get update ..."
    # A first boot's unattended-upgrades may hold the dpkg lock for a while: wait for it.
    DEBIAN_FRONTEND=noninteractive apt-get update -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=600
    # Test-only tools a distribution does not ship (Ubuntu has no chromium .deb) are skipped with a
    # note; a missing lab package is an error.
    INSTALL=()
    for pkg in "${IF_SHIPPED[@]}"; do
        if has_candidate "$pkg"; then INSTALL+=("$pkg"); else say "$pkg: not shipped by $DISTRO $VERSION_ID (not needed there)"; fi
    done
    for pkg in "${MISSING[@]}"; do
        if has_candidate "$pkg"; then
            INSTALL+=("$pkg")
        elif grep -Eq "^${pkg}[[:space:]].*\btest\b" "$PACKAGES_FILE"; then
            say "warning: $pkg is not available on $DISTRO $VERSION_ID: skipped (its tests will skip)"
        else
            die "package $pkg is not available on $DISTRO $VERSION_ID $ARCH"
        fi
    done
    if [ ${#INSTALL[@]} -gt 0 ]; then
        [ ${#KERNEL_PKGS[@]} -eq 0 ] || say "guest kernel: ${KERNEL_PKGS[*]} (INITRD=No: no initramfs is generated)"
        say "apt-get install ${INSTALL[*]} ..."
        apt_install "${INSTALL[@]}"
        changed "installed ${#INSTALL[@]} package(s): ${INSTALL[*]}"
    fi
fi

# --- 3. the Python venv with labkit ---------------------------------------------------------------
# Every package at the version constraints.txt pins (`make lock` writes it), so that machines built
# a month apart install the same ones; `--test-tools` adds pyproject.toml's `test` extra. Reinstalled
# only when pyproject.toml, constraints.txt or the base Python changed, or the test tools are wanted
# and missing: the stamp records the first three and whether the extra is in.
# The install is editable in setuptools' "compat" mode: a plain path line in a .pth file, instead of
# the default import hook, which costs every Python start of the venv about 10 ms of imports (pathlib,
# importlib.util ...) - and `docker run --runtime labkit` starts labkit-runtime four times.
EDITABLE_MODE=compat
pick_python() {
    local py real
    for py in "${LABKIT_PYTHON:-}" python3 /usr/bin/python3; do
        if [ -z "$py" ] || ! command -v "$py" >/dev/null 2>&1; then continue; fi
        real=$("$py" -c 'import sys; print(sys.executable)' 2>/dev/null) || continue
        if "$real" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            printf '%s\n' "$real"
            return 0
        fi
    done
    return 1
}

STAMP=$VENV/.labkit-provisioned
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    BASE_PY=$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)')
else
    BASE_PY=$(pick_python) || die "no Python >= 3.11 with venv found (apt-get install python3-venv)"
    if [ -e "$VENV" ]; then
        say "venv at $VENV is broken: rebuilding it"
        rm -rf "$VENV"
    fi
    say "creating venv $VENV from $BASE_PY"
    "$BASE_PY" -m venv "$VENV"
    changed "created venv $VENV"
fi
LOCK=$REPO/constraints.txt
[ -f "$LOCK" ] || die "missing $LOCK (make lock writes it)"
WANT_STAMP="$(cat "$REPO/pyproject.toml" "$LOCK" | sha256sum | cut -d' ' -f1)-$EDITABLE_MODE $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"
HAVE_HASH='' HAVE_PY='' HAVE_EXTRA=''
[ -f "$STAMP" ] && read -r HAVE_HASH HAVE_PY HAVE_EXTRA < "$STAMP"
EXTRA=lab
if [ "$TEST_TOOLS" = 1 ] || [ "$HAVE_EXTRA" = test ]; then
    EXTRA="test"   # once installed, the test tools stay: `make lab` after `make test` changes nothing
fi
if [ "$HAVE_HASH $HAVE_PY" = "$WANT_STAMP" ] && [ "$HAVE_EXTRA" = "$EXTRA" ] \
        && "$VENV/bin/python" -c 'import labkit' 2>/dev/null; then
    say "venv: up to date with pyproject.toml and constraints.txt ($VENV)"
else
    TARGET=$REPO
    [ "$EXTRA" = test ] && TARGET="${REPO}[test]"
    say "pip install -c constraints.txt -e $TARGET (labkit and its dependencies) ..."
    "$VENV/bin/python" -m pip install --progress-bar off -c "$LOCK" \
        --config-settings "editable_mode=$EDITABLE_MODE" -e "$TARGET"
    printf '%s %s\n' "$WANT_STAMP" "$EXTRA" > "$STAMP"
    changed "installed labkit and its Python dependencies ($EXTRA) into $VENV"
fi

# A classroom image carries the guest kernel only for chapter 6's microVM, which loads fifteen modules
# (labkit.vm.initramfs.guest_modules(): 9p and overlay to share the host, virtio_net for its NIC): the
# other ~4000 go, a few hundred MB less per image.
if [ "$CONTAINER" = 1 ]; then
    KEEP=$("$VENV/bin/python" -c 'from labkit.vm.initramfs import guest_modules; print("|".join(guest_modules()))')
    for dir in /lib/modules/*/; do
        [ -d "$dir/kernel" ] || continue
        pruned=$(find "$dir/kernel" -name '*.ko*' -regextype posix-extended \
                      ! -regex ".*/($KEEP)\.ko(\.[a-z]+)?" -print -delete | wc -l)
        if [ "$pruned" -gt 0 ]; then
            depmod "$(basename "$dir")"
            changed "pruned $pruned kernel modules under $dir (kept: ${KEEP//|/ })"
        fi
    done
fi

# JupyterLab defaults for the lab (no "fetch news?" prompt, no update check: the lab is offline),
# where JupyterLab reads them: overrides.json in the venv's application settings.
OVERRIDES=$VENV/share/jupyter/lab/settings/overrides.json
if ! cmp -s "$REPO/vagrant/jupyterlab-settings/overrides.json" "$OVERRIDES"; then
    mkdir -p "$(dirname "$OVERRIDES")"
    cp "$REPO/vagrant/jupyterlab-settings/overrides.json" "$OVERRIDES"
    changed "installed JupyterLab defaults $OVERRIDES"
fi

# A venv outside the repository (the Vagrant VM keeps it off the synced folder, where symlinks may be
# refused) is put on PATH for login shells (and LABKIT_VENV for `make`), and `labkit` is linked into
# /usr/local/bin so that `sudo labkit lab url` works (sudo's secure_path includes it).
case "$VENV" in
    "$REPO"/*) ;;
    *)
        PROFILE=/etc/profile.d/deep-dive-lab.sh
        WANT="export LABKIT_VENV=$VENV; export PATH=\"$VENV/bin:\$PATH\""
        if [ "$(cat "$PROFILE" 2>/dev/null)" != "$WANT" ]; then
            printf '%s\n' "$WANT" > "$PROFILE"
            changed "wrote $PROFILE"
        fi
        if [ "$(readlink /usr/local/bin/labkit 2>/dev/null)" != "$VENV/bin/labkit" ]; then
            ln -sfn "$VENV/bin/labkit" /usr/local/bin/labkit
            changed "linked /usr/local/bin/labkit -> $VENV/bin/labkit"
        fi ;;
esac

# Bytecode compiled once: with PYTHONDONTWRITEBYTECODE set (some CI images set it) every `labkit` and
# `labkit-runtime` call would otherwise recompile what it imports. Not a change: the sources rule.
"$VENV/bin/python" -m compileall -q "$REPO/labkit" >/dev/null || say "compileall: some modules did not compile"

# labkit as a runtime for the real Docker (`docker run --runtime labkit`, notebook 41).
# Docker knows it by one fixed path, $RUNTIME_ENTRY, whichever checkout provisioned: a small script
# written here that names the checkout (and venv) whose code it runs. Several checkouts on one machine
# (a CI clone beside the learner's, or several worktrees) then never rewrite daemon.json, and one of
# them cannot silently take Docker's runtime away from another: the script is rewritten only when it
# is missing, names this checkout already, or names a checkout whose venv is gone. A live other
# checkout keeps it unless LABKIT_RUNTIME_TAKEOVER=1 (`make test` sets it: a test run must exercise
# its own code; test_runtime.py checks that it does).
# The script runs Python with -I -S: no .pth file is processed and nothing from the environment is
# read, because containerd's shim starts the runtime at least four times per `docker run` and
# labkit-runtime needs only labkit and the standard library (site-packages stays on the path, last).
RUNTIME_ENTRY=/usr/local/lib/labkit/labkit-runtime
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
WANT_ENTRY="#!$VENV/bin/python -IS
# Docker's runtime 'labkit' (/etc/docker/daemon.json), written by vagrant/provision.sh; it runs labkit from
# $REPO
import sys
sys.path[:0] = [\"$REPO\"]
sys.path.append(\"$SITE\")
from labkit.runtime.cli import main
sys.exit(main())"
if [ "$(cat "$RUNTIME_ENTRY" 2>/dev/null)" = "$WANT_ENTRY" ]; then
    say "docker: $RUNTIME_ENTRY runs this checkout's labkit-runtime"
else
    OWNER=$(sed -n '3s/^# //p' "$RUNTIME_ENTRY" 2>/dev/null || true)
    OWNER_PY=$(sed -n '1s/^#!\([^ ]*\).*/\1/p' "$RUNTIME_ENTRY" 2>/dev/null || true)
    if [ -n "$OWNER" ] && [ "$OWNER" != "$REPO" ] && [ -x "$OWNER_PY" ] \
            && [ -f "$OWNER/labkit/runtime/cli.py" ] && [ "${LABKIT_RUNTIME_TAKEOVER:-0}" != 1 ]; then
        say "docker: $RUNTIME_ENTRY runs the labkit of another live checkout, $OWNER: left alone"
        say "        (LABKIT_RUNTIME_TAKEOVER=1 bash vagrant/provision.sh makes it run this one's)"
    else
        mkdir -p "$(dirname "$RUNTIME_ENTRY")"
        printf '%s\n' "$WANT_ENTRY" > "$RUNTIME_ENTRY.labkit-tmp"
        chmod 755 "$RUNTIME_ENTRY.labkit-tmp"
        mv -f "$RUNTIME_ENTRY.labkit-tmp" "$RUNTIME_ENTRY"
        changed "$RUNTIME_ENTRY runs labkit-runtime from $REPO${OWNER:+ (before: $OWNER)}"
    fi
fi

# Merged into /etc/docker/daemon.json as runtimes.labkit.path, keeping every other setting; a file
# that is not valid JSON is left alone (an error, not a guess). dockerd reads `runtimes` again on
# SIGHUP, so a running daemon (its pid file) is reloaded, and only when something changed.
DAEMON_JSON=/etc/docker/daemon.json
if command -v dockerd >/dev/null 2>&1; then
    rc=0
    "$VENV/bin/python" - "$DAEMON_JSON" "$RUNTIME_ENTRY" <<'PY' || rc=$?
import json, os, sys
path, runtime = sys.argv[1:]
try:
    with open(path) as f:
        config = json.load(f)
except FileNotFoundError:
    config = {}
except ValueError as exc:
    sys.exit(f"{path} is not valid JSON ({exc}): fix it, then provision again")
if not isinstance(config, dict) or not isinstance(config.get("runtimes", {}), dict):
    sys.exit(f"{path}: expected an object with an object 'runtimes'")
if config.get("runtimes", {}).get("labkit") == {"path": runtime}:
    sys.exit(3)                                  # already registered: nothing to do
config.setdefault("runtimes", {})["labkit"] = {"path": runtime}
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".labkit-tmp", "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(path + ".labkit-tmp", path)
PY
    case $rc in
        0)  changed "registered $RUNTIME_ENTRY as Docker's runtime 'labkit' in $DAEMON_JSON"
            if [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
                kill -HUP "$(cat /var/run/docker.pid)"
                changed "reloaded the running dockerd (pid $(cat /var/run/docker.pid)) to read its runtimes"
            fi ;;
        3)  say "docker: runtime 'labkit' registered in $DAEMON_JSON" ;;
        *)  die "could not register the labkit runtime in $DAEMON_JSON" ;;
    esac
fi

# --- 4. the lab-host marker ------------------------------------------------------------------------
if [ -f "$MARKER" ]; then
    say "lab host: $MARKER present (labkit may create kernel objects here)"
else
    mkdir -p "$(dirname "$MARKER")"
    printf 'This machine is a Docker Deep Dive Lab host: labkit may create namespaces, cgroups,\nnetwork links and microVMs here. Written by vagrant/provision.sh.\n' > "$MARKER"
    changed "wrote the lab-host marker $MARKER: this machine is now a lab host"
fi

# --- 4b. an unprivileged learner for rootless containers (notebook 32) -----------------------------
# A system user with no login and no home, and a subordinate id range of its own in /etc/subuid and
# /etc/subgid: newuidmap/newgidmap (package uidmap) let it map exactly these ids into a user
# namespace it creates. The range starts after every range already given out (like useradd does).
LEARNER=labkit-learner
if ! id -u "$LEARNER" >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        --comment "Docker Deep Dive Lab rootless learner" "$LEARNER"
    changed "created the user $LEARNER (no login; notebook 32's rootless container)"
fi
for ids in subuid subgid; do
    if ! grep -q "^$LEARNER:" "/etc/$ids" 2>/dev/null; then
        start=$(awk -F: 'BEGIN { next_free = 100000 } $2 + $3 > next_free { next_free = $2 + $3 }
                         END { print next_free }' "/etc/$ids" 2>/dev/null || echo 100000)
        echo "$LEARNER:$start:65536" >> "/etc/$ids"
        changed "gave $LEARNER the subordinate ids $start-$((start + 65535)) in /etc/$ids"
    fi
done

# --- 5. JupyterLab ---------------------------------------------------------------------------------
if [ "$START_LAB" = 1 ]; then
    LABKIT=$VENV/bin/labkit
    if "$LABKIT" lab status --quiet "${LAB_ARGS[@]}" --notebook-dir "$REPO/notebooks"; then
        say "JupyterLab: already running as configured"
    else
        "$LABKIT" lab start "${LAB_ARGS[@]}" --notebook-dir "$REPO/notebooks"
        changed "started JupyterLab"
    fi
fi

# --- summary ---------------------------------------------------------------------------------------
if [ ${#CHANGES[@]} -eq 0 ]; then
    say "nothing changed"
else
    say "${#CHANGES[@]} change(s):"
    for c in "${CHANGES[@]}"; do say "  - $c"; done
fi
if [ "$START_LAB" = 1 ]; then
    echo
    echo "JupyterLab is running. Open this URL in your browser:"
    echo "    $("$VENV/bin/labkit" lab url)"
    echo "(print it again any time with: labkit lab url)"
fi
