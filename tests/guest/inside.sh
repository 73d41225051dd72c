#!/bin/bash
# Runs INSIDE the Debian 13 guest, as the unit systemd makes from the kernel command line
# (systemd.run=, see tests/guest/boot.py); the guest powers off when it returns.
#
#   inside.sh provision   first boot of a new image: vagrant/provision.sh as Vagrant runs it
#   inside.sh facts       print what the guest is (release, kernel, pid 1, cgroups, the lab's unit)
#   inside.sh shell       run request.json's "command" (debugging: tests/guest/boot.py shell CMD)
#   inside.sh test        facts, `labkit doctor`, then the test stages named in request.json
#
# Talks to the host in labkit.vm's console protocol: lines `@@LABKIT:KIND@@ text`. The checkout is
# /vagrant (the share is read-only; a tmpfs overlay makes it writable inside); the host's writable share
# `labkit-out` receives JUnit files and executed notebooks.
set -uo pipefail
exec </dev/null >/dev/console 2>&1      # the serial console is what the host reads

MODE=${1:-test}
REPO=/vagrant
VENV=/opt/deep-dive-lab/venv
OUT=/run/labkit-out
UNIT=deep-dive-lab.service
export PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
export PYTHONUNBUFFERED=1 LANG=C.UTF-8

M='@@LABKIT:'
mark() { local kind=$1; shift; printf '%s%s@@ %s\n' "$M" "$kind" "$*"; }
fact() { mark FACT "$1=$2"; }
finish() { mark DONE "$1"; sync; exit "$1"; }

mark MILESTONE "inside.sh $MODE started (systemd reached the kernel command line's unit)"
mkdir -p "$OUT"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 labkit-out "$OUT" || { mark FAIL "mount labkit-out"; finish 1; }
request() { /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$OUT/request.json" "$1"; }

# --- provision: the first boot of a new image ------------------------------------------------------
if [ "$MODE" = provision ]; then
    # Exactly the Vagrantfile's provisioner (plus the test tools): same script, same environment.
    mark STAGE-BEGIN "provision.sh --lab (as vagrant up)"
    LABKIT_REPO=$REPO LABKIT_VENV=$VENV bash "$REPO/vagrant/provision.sh" --test-tools --lab --ip 0.0.0.0 --port 8888
    rc=$?
    mark STAGE-END "provision.sh --lab (as vagrant up) $rc"
    fact unit-enabled "$(systemctl is-enabled $UNIT 2>&1)"
    finish "$rc"
fi

# --- the synced folder, writable as a learner's is: a tmpfs overlay on the read-only share ---------
# Bytecode caches, pytest's temporary files and whatever a notebook writes beside itself land in the
# guest's RAM; the host's checkout is never written. (Without it, every Python process in the guest
# would compile labkit and the tests from source again: no __pycache__ could be written.)
overlay_repo() {
    mkdir -p /run/vagrant-rw
    mount -t tmpfs -o mode=0755 tmpfs /run/vagrant-rw && mkdir /run/vagrant-rw/upper /run/vagrant-rw/work &&
        mount -t overlay overlay -o "lowerdir=$REPO,upperdir=/run/vagrant-rw/upper,workdir=/run/vagrant-rw/work" "$REPO"
}
overlay_repo || { mark FAIL "could not lay a writable overlay on $REPO"; finish 1; }

# --- shell: a debugging aid (tests/guest/boot.py shell 'COMMAND') -----------------------------------
if [ "$MODE" = shell ]; then
    bash -c "$(request command)"
    finish $?
fi

# --- facts -------------------------------------------------------------------------------------------
# shellcheck source=/dev/null
. /etc/os-release
fact release "$PRETTY_NAME"
fact kernel "$(uname -r)"
fact python "$("$VENV/bin/python" -c 'import platform; print(platform.python_version())') ($VENV)"
fact pid1 "$(cat /proc/1/comm) ($(readlink /proc/1/exe)), $(systemctl --version | head -n1)"
fact cgroupfs "$(stat -fc %T /sys/fs/cgroup) at /sys/fs/cgroup"
fact controllers "$(cat /sys/fs/cgroup/cgroup.controllers)"
fact cpus "$(nproc), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
# Deadlines written for hardware (labkit's VM boot, the tests' waits) stretch on an emulated CPU
# (labkit/emulation.py); GUEST_TIME_SCALE on the host sets the factor instead of detecting it.
SCALE=$(request time_scale)
[ -n "$SCALE" ] && export LABKIT_TIME_SCALE=$SCALE
fact deadlines "$("$VENV/bin/python" -c 'from labkit import emulation; print(emulation.describe())')"

# The lab as the Vagrant VM starts it: the unit provisioning enabled, its delegated subtree.
deadline=$((SECONDS + 600))
until [ "$(systemctl is-active $UNIT)" = active ] && labkit lab status --quiet; do
    if [ $SECONDS -gt $deadline ]; then
        mark FAIL "$UNIT did not answer within 600 s"
        systemctl status $UNIT --no-pager; journalctl -b -u $UNIT --no-pager | tail -n 30; finish 1
    fi
    if [ $((SECONDS % 30)) -lt 2 ]; then
        echo "waiting for $UNIT: $(systemctl is-active $UNIT); $(labkit lab status 2>&1 | tail -n 1)"
    fi
    sleep 2
done
mark MILESTONE "$UNIT active and JupyterLab answering"
fact unit "$(systemctl is-enabled $UNIT) + $(systemctl is-active $UNIT), $(systemctl show -P Delegate $UNIT | sed 's/^yes$/Delegate=yes/')"
CG=$(systemctl show -P ControlGroup $UNIT)
MAINPID=$(systemctl show -P MainPID $UNIT)
fact unit-cgroup "$CG"
fact subtree "$(cd "/sys/fs/cgroup$CG" && find . -mindepth 1 -maxdepth 1 -type d -printf '%f/ ' ) (subtree_control: $(cat "/sys/fs/cgroup$CG/cgroup.subtree_control"))"
fact jupyterlab "pid $MAINPID in $(sed -n 's/^0:://p' "/proc/$MAINPID/cgroup")"
PARENT=$(tr '\0' '\n' < "/proc/$MAINPID/environ" | sed -n 's/^LABKIT_CGROUP_PARENT=//p')
fact cgroup-parent "LABKIT_CGROUP_PARENT=$PARENT (the kernels' labkit cgroups go there)"

# Run a command the way a notebook kernel runs: in the service's jupyter/ leaf, with its environment.
# shellcheck disable=SC2317  # called through stage
as_kernel() {
    ( echo "$BASHPID" > "/sys/fs/cgroup$CG/jupyter/cgroup.procs" && LABKIT_CGROUP_PARENT=$PARENT exec "$@" )
}

[ "$MODE" = facts ] && finish 0

# --- test --------------------------------------------------------------------------------------------
STAGES=$(request stages)
PYTEST_EXTRA=$(request pytest_args)
cd "$REPO" || finish 1
status=0

stage() {   # stage NAME COMMAND...: markers around it, exit status recorded
    local name=$1 rc; shift
    mark STAGE-BEGIN "$name"
    "$@"
    rc=$?
    mark STAGE-END "$name $rc"
    [ "$rc" -eq 0 ] || status=1
}

# pytest with its JUnit report in the out share and no cache (the checkout is read-only)
read -r -a EXTRA <<< "$PYTEST_EXTRA"
PYTEST=(python -m pytest -q -rfEs -p no:cacheprovider --color=no)
# request.json's "notebooks": globs under notebooks/ (GUEST_NOTEBOOKS); all of them by default
read -r -a GLOBS <<< "$(request notebooks)"
NOTEBOOKS=()
# shellcheck disable=SC2206  # the globs are meant to expand
for g in "${GLOBS[@]:-*.ipynb}"; do NOTEBOOKS+=(notebooks/$g); done
# request.json's "tests": files under tests/integration/ (GUEST_TESTS); the whole directory by default
read -r -a TESTS <<< "$(request tests)"
INTEGRATION=()
for t in "${TESTS[@]:-}"; do INTEGRATION+=("tests/integration/$t"); done

stage doctor as_kernel labkit doctor
if command -v cloud-init >/dev/null; then
    stage cloud-init-schema cloud-init schema --config-file "$REPO/vagrant/cloud-init.yaml"
fi

for s in $STAGES; do
    case $s in
        unit) stage unit "${PYTEST[@]}" --junitxml="$OUT/unit.xml" tests/unit "${EXTRA[@]}" ;;
        # nbval's kernels live where a learner's kernels live: the service's jupyter/ leaf
        notebooks) stage notebooks as_kernel "${PYTEST[@]}" --junitxml="$OUT/notebooks.xml" \
            --nbval-lax --nbval-sanitize-with tests/sanitize.cfg "${NOTEBOOKS[@]}" "${EXTRA[@]}" ;;
        execute) stage execute as_kernel python tests/guest/execute_notebooks.py "$OUT/notebooks" ;;
        integration) stage integration "${PYTEST[@]}" --junitxml="$OUT/integration.xml" "${INTEGRATION[@]}" "${EXTRA[@]}" ;;
        *) mark FAIL "unknown stage $s"; status=1 ;;
    esac
done

stage leaks labkit cleanup --check
finish "$status"
