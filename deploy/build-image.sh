#!/usr/bin/env bash
# Build the classroom's lab image WITHOUT any registry: debootstrap a Debian, run the lab's own
# vagrant/provision.sh inside a chroot of it (--container: no unit, no test tools, pruned kernel
# modules), pin jupyterhub to the hub's version, then `docker import` the tree as one image.
#
#   deploy/build-image.sh [--suite bookworm|trixie] [--tag NAME:TAG] [--mirror URL]
#                         [--jupyterhub-version X.Y.Z] [--ca-bundle FILE] [--pip-conf FILE]
#                         [--test-tools]
#
#   --suite               Debian 12 (bookworm, default) or 13 (trixie)
#   --tag                 the image's name (default deep-dive-lab:latest; deploy/jupyterhub_config.py's
#                         LABKIT_IMAGE)
#   --mirror              the Debian mirror (default http://deb.debian.org/debian)
#   --jupyterhub-version  the hub's version; the single-user server must match it (default: what
#                         deploy/.hub-venv has, else the newest on the package index)
#   --ca-bundle FILE      a CA bundle pip must trust inside the chroot (a proxy or mirror with its own
#                         CA, e.g. the host's /etc/ssl/certs/ca-certificates.crt); used for the build,
#                         not left in the image
#   --pip-conf FILE       a pip.conf (index URL of a local mirror, ...) for the build; not left in
#                         the image either
#   --test-tools          also pytest and nbval (pinned by constraints.txt) in the image's venv: the
#                         classroom test stage (tests/classroom/) runs nbval inside learner containers
#                         with --network none, so they must be in the image; a class image leaves them out
#
# Run as root on a Debian/Ubuntu host with debootstrap and docker (DOCKER_HOST picks the daemon). The chroot lives in
# /var/tmp/labkit-image.XXXXXX and is removed afterwards (--one-file-system: never through a mount).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SUITE=bookworm TAG=deep-dive-lab:latest MIRROR=http://deb.debian.org/debian
HUB_VERSION='' CA_BUNDLE='' PIP_CONF='' TEST_TOOLS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --suite|--tag|--mirror|--jupyterhub-version|--ca-bundle|--pip-conf)
            [ $# -ge 2 ] || { echo "build-image: $1 needs a value" >&2; exit 2; }
            case "$1" in
                --suite) SUITE=$2 ;; --tag) TAG=$2 ;; --mirror) MIRROR=$2 ;;
                --jupyterhub-version) HUB_VERSION=$2 ;; --ca-bundle) CA_BUNDLE=$2 ;; --pip-conf) PIP_CONF=$2 ;;
            esac
            shift ;;
        --test-tools) TEST_TOOLS=1 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "build-image: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
say() { printf '[build-image] %s\n' "$*"; }
die() { printf '[build-image] ERROR: %s\n' "$*" >&2; exit 1; }

case "$SUITE" in bookworm|trixie) ;; *) die "--suite $SUITE: accepted are bookworm (Debian 12) and trixie (Debian 13)" ;; esac
[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap and chroot need it"
for tool in debootstrap docker; do command -v "$tool" >/dev/null || die "$tool is missing"; done
for f in "$CA_BUNDLE" "$PIP_CONF"; do [ -z "$f" ] || [ -f "$f" ] || die "$f: no such file"; done
if [ -z "$HUB_VERSION" ] && [ -x "$HERE/.hub-venv/bin/jupyterhub" ]; then
    HUB_VERSION=$("$HERE/.hub-venv/bin/jupyterhub" --version)
fi

ROOT=$(mktemp -d /var/tmp/labkit-image.XXXXXX)
MOUNTS=()
finish() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[i]}" 2>/dev/null || true; done
    if findmnt -rn -o TARGET | grep -q "^$ROOT/"; then
        say "something is still mounted under $ROOT: left in place, remove it by hand"
    else
        rm -rf --one-file-system "$ROOT"
    fi
}
trap finish EXIT
bind() { mkdir -p "$ROOT$2"; mount "${@:3}" "$1" "$ROOT$2"; MOUNTS+=("$ROOT$2"); }

start=$SECONDS
say "debootstrap $SUITE into $ROOT ..."
# Its phases as progress ("I: Unpacking required packages..."), not its line per package.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$ROOT" "$MIRROR" \
    | { grep --line-buffered -E '^I: [A-Z][a-z]+ [^ ]+ .*[.][.][.]$|^I: Base system' \
          | sed -u 's/^I: /[build-image]   debootstrap: /' || true; }
say "debootstrap done after $((SECONDS - start)) s"

# The repository as the image will have it: tracked files only (no venv, no test output).
mkdir -p "$ROOT/opt/labkit"
git -C "$REPO" ls-files -z | (cd "$REPO" && tar --null -T - -cf -) | tar -C "$ROOT/opt/labkit" -xf -

bind proc /proc -t proc
bind sysfs /sys -t sysfs
bind /dev /dev --bind
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"     # no daemon starts in the chroot
chmod +x "$ROOT/usr/sbin/policy-rc.d"
ENV=(LABKIT_VENV=/opt/labkit/.venv LABKIT_REPO=/opt/labkit PATH=/usr/sbin:/usr/bin:/sbin:/bin)
if [ -n "$CA_BUNDLE" ]; then
    cp "$CA_BUNDLE" "$ROOT/tmp/build-ca.pem"
    ENV+=(PIP_CERT=/tmp/build-ca.pem)
fi
[ -z "$PIP_CONF" ] || { cp "$PIP_CONF" "$ROOT/tmp/build-pip.conf"; ENV+=(PIP_CONFIG_FILE=/tmp/build-pip.conf); }

say "provisioning inside the chroot (vagrant/provision.sh --container) ..."
chroot "$ROOT" env -i "${ENV[@]}" bash /opt/labkit/vagrant/provision.sh --container
HUB_SPEC=jupyterhub${HUB_VERSION:+==$HUB_VERSION}
say "pip install $HUB_SPEC (the single-user server must match the hub) ..."
chroot "$ROOT" env -i "${ENV[@]}" /opt/labkit/.venv/bin/python -m pip install --progress-bar off -q "$HUB_SPEC"
if [ "$TEST_TOOLS" = 1 ]; then
    say "pip install pytest nbval (--test-tools) ..."
    chroot "$ROOT" env -i "${ENV[@]}" /opt/labkit/.venv/bin/python -m pip install --progress-bar off -q \
        -c /opt/labkit/constraints.txt pytest nbval
fi
say "provisioned after $((SECONDS - start)) s"

# Nothing of the build stays: caches, the build's CA and pip config, the no-daemons policy.
rm -f "$ROOT/usr/sbin/policy-rc.d" "$ROOT/tmp/build-ca.pem" "$ROOT/tmp/build-pip.conf" "$ROOT/etc/resolv.conf"
rm -rf "$ROOT/var/cache/apt/archives/"*.deb "$ROOT/var/lib/apt/lists/"* "$ROOT/root/.cache"
for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[i]}"; done
MOUNTS=()

say "docker import as $TAG ..."
tar -C "$ROOT" --numeric-owner -cf - . | docker import \
    --change 'ENV PATH=/opt/labkit/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LABKIT_VENV=/opt/labkit/.venv' \
    --change 'WORKDIR /opt/labkit/notebooks' \
    --change 'CMD ["labkit", "lab", "leaf", "--", "jupyterhub-singleuser", "--allow-root"]' \
    - "$TAG" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$TAG")
say "built $TAG: $((size / 1048576)) MiB, in $((SECONDS - start)) s"
