"""The guest tier's disk image: a fresh Debian 13 (trixie), provisioned the way Vagrant provisions.

Built once and cached (default /var/cache/labkit/guest, LABKIT_GUEST_CACHE to move it); rebuilt when
one of KEY_FILES changes (the package list, pyproject.toml, the lock file, provision.sh, this
recipe). The steps, each printed with its elapsed time:

1. debootstrap --variant=minbase trixie from Debian's package registry, with systemd as init,
   udev, Python 3 and initramfs-tools (the rest comes from provisioning, as on a Vagrant box);
2. in a chroot, the checkout's `vagrant/provision.sh --test-tools` with LABKIT_REPO=/vagrant and
   LABKIT_VENV=/opt/deep-dive-lab/venv, as the Vagrantfile runs it (a copy of the checkout sits at
   /vagrant for this step only). It installs every package of vagrant/packages.txt - Debian 13's own
   kernel among them - and the venv. Native speed: no emulation for the heavy part;
3. cloud-init (disabled at boot: /etc/cloud/cloud-init.disabled) so the run can validate
   vagrant/cloud-init.yaml offline with `cloud-init schema`; Debian's initramfs for the kernel;
4. an ext4 file system made from the directory (mkfs.ext4 -d: no loop device, no mount);
5. a first boot of that disk, writable, with systemd as PID 1: provision.sh runs again as Vagrant
   runs it in the booted box (`--lab --ip 0.0.0.0 --port 8888`). Packages and venv are in place, so it
   writes, enables and starts deep-dive-lab.service - what a learner's `vagrant up` leaves behind.

Test boots then use the disk with qemu's snapshot=on: their writes go to a scratch file and the
image stays pristine.

pip behind a TLS-intercepting proxy: the build hands the chroot the host's CA bundle and pip
configuration (LABKIT_GUEST_CA_BUNDLE, LABKIT_GUEST_PIP_CONF; by default whatever the host's pip
uses: PIP_CERT / pip's `global.cert`, PIP_CONFIG_FILE). They are used for the build only and are
not left in the image. Set LABKIT_GUEST_CA_BUNDLE= (empty) to pass none.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("LABKIT_GUEST_CACHE", "/var/cache/labkit/guest"))
SUITE = "trixie"
MIRROR = os.environ.get("LABKIT_GUEST_MIRROR", "http://deb.debian.org/debian")
# What debootstrap installs; everything else is provision.sh's job, as on a Vagrant base box.
BASE_PACKAGES = ("systemd", "systemd-sysv", "udev", "dbus", "initramfs-tools", "python3", "python3-venv")
REPO_IN_GUEST = "/vagrant"                       # Vagrant's synced folder
VENV_IN_GUEST = "/opt/deep-dive-lab/venv"        # the Vagrantfile's LABKIT_VENV
# A change in any of these makes the cached image stale (globs: the lock file's name may vary).
KEY_FILES = ("vagrant/packages.txt", "pyproject.toml", "constraints.txt", "*.lock", "requirements*.txt",
             "vagrant/provision.sh", "vagrant/jupyterlab-settings/overrides.json",
             "tests/guest/image.py")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Image:
    disk: Path
    kernel: Path
    initrd: Path
    key: str
    kernel_version: str
    built_at: str
    build_seconds: float
    steps: dict            # step -> seconds
    reused: bool = False

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def say(text: str) -> None:
    print(f"[guest image] {text}", flush=True)


def key_files() -> list[Path]:
    found = []
    for pattern in KEY_FILES:
        found += sorted(p for p in PROJECT.glob(pattern) if p.is_file())
    return found


def image_key() -> str:
    h = hashlib.sha256(SUITE.encode() + b"\0" + " ".join(BASE_PACKAGES).encode())
    for path in key_files():
        h.update(str(path.relative_to(PROJECT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cached(cache: Path = CACHE, stale_ok: bool = False) -> Image | None:
    """The cached image if it matches the current key files (or any, with stale_ok), else None."""
    try:
        meta = json.loads((cache / "image.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != image_key() and not stale_ok:
        return None
    image = Image(**{k: v for k, v in meta.items() if k in Image.__dataclass_fields__})
    image.disk, image.kernel, image.initrd = Path(image.disk), Path(image.kernel), Path(image.initrd)
    if not all(p.is_file() for p in (image.disk, image.kernel, image.initrd)):
        return None
    image.reused = True
    return image


# --- build options: what pip needs behind a proxy ----------------------------------------------------

def _host_pip_setting(env: str, pip_key: str) -> str:
    if os.environ.get(env):
        return os.environ[env]
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "get", pip_key],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def ca_bundle() -> str:
    """LABKIT_GUEST_CA_BUNDLE if set (empty: none), else the CA bundle the host's pip trusts."""
    if "LABKIT_GUEST_CA_BUNDLE" in os.environ:
        return os.environ["LABKIT_GUEST_CA_BUNDLE"]
    return _host_pip_setting("PIP_CERT", "global.cert")


def pip_conf() -> str:
    """LABKIT_GUEST_PIP_CONF if set (empty: none), else the host's PIP_CONFIG_FILE."""
    return os.environ.get("LABKIT_GUEST_PIP_CONF", os.environ.get("PIP_CONFIG_FILE", ""))


# --- steps -------------------------------------------------------------------------------------------

def run(argv: list[str], *, label: str, log: Path, env: dict | None = None) -> None:
    """Run a build command; its output goes to the log, one progress line every 15 s to the terminal."""
    t0 = time.monotonic()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        last = t0
        while proc.poll() is None:
            time.sleep(1)
            if time.monotonic() - last >= 15:
                last = time.monotonic()
                say(f"  {label}: {last - t0:.0f}s ... {_last_line(log)}")
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed (exit {proc.returncode}); last lines of {log}:\n"
                           + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 400))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1][:100] if lines else ""
    except OSError:
        return ""


class Chroot:
    """/proc, /sys, /dev mounted into the tree for provisioning; unmounted (lazily, recursively) after."""

    def __init__(self, root: Path):
        self.root = root
        self.mounts: list[Path] = []

    def __enter__(self):
        for kind, target, args in (("proc", "proc", ["-t", "proc", "proc"]),
                                   ("sys", "sys", ["--rbind", "/sys"]),
                                   ("dev", "dev", ["--bind", "/dev"]),
                                   ("pts", "dev/pts", ["--bind", "/dev/pts"])):
            path = self.root / target
            path.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", *args, str(path)], check=True)
            self.mounts.append(path)
        return self

    def __exit__(self, *exc):
        for path in reversed(self.mounts):
            subprocess.run(["umount", "-R", "-l", str(path)], check=False)

    def argv(self, *command: str, env: dict | None = None) -> list[str]:
        base = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        pairs = [f"{k}={v}" for k, v in {**base, **(env or {})}.items()]
        return ["chroot", str(self.root), "/usr/bin/env", "-i", *pairs, *command]


def copy_checkout(dest: Path) -> None:
    """The checkout's tracked and untracked-but-not-ignored files (what the synced folder shows)."""
    files = subprocess.run(["git", "-C", str(PROJECT), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, check=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    tar = subprocess.Popen(["tar", "-C", str(PROJECT), "--null", "-T", "-", "-cf", "-"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    untar = subprocess.Popen(["tar", "-C", str(dest), "-xf", "-"], stdin=tar.stdout)
    tar.stdout.close()
    tar.communicate(files)
    if untar.wait() != 0 or tar.returncode not in (0,):
        raise RuntimeError(f"copying the checkout into {dest} failed")


FSTAB = f"""\
# Written by tests/guest/image.py: the root disk, and the checkout shared as Vagrant's synced folder.
/dev/vda  /  ext4  errors=remount-ro  0  1
vagrant  {REPO_IN_GUEST}  9p  trans=virtio,version=9p2000.L,msize=512000,ro,nofail,x-systemd.device-timeout=10s  0  0
"""


def configure_base(root: Path) -> None:
    (root / "etc/hostname").write_text("deep-dive-lab\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 deep-dive-lab\n::1 localhost ip6-localhost\n")
    (root / "etc/fstab").write_text(FSTAB)
    (root / REPO_IN_GUEST.lstrip("/")).mkdir(exist_ok=True)
    # Debian's initramfs with only what this disk needs (virtio block + ext4): small, so quick under TCG.
    conf = root / "etc/initramfs-tools/conf.d/labkit-guest"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("MODULES=list\nCOMPRESS=gzip\n")
    (root / "etc/initramfs-tools/modules").write_text("virtio_pci\nvirtio_blk\next4\n")


def build(cache: Path = CACHE) -> Image:
    """Build the image from nothing into `cache` (replacing an older one only when done)."""
    key = image_key()
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"build-{key}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    root, log = work / "root", work / "build.log"
    say(f"building a fresh Debian 13 image (key {key}) in {work}; full log: {log}")
    t_start = time.monotonic()
    steps = {}

    def step(name: str):
        steps[name] = time.monotonic()
        say(f"step {len(steps)}/5: {name}")

    def done():
        name = list(steps)[-1]
        steps[name] = round(time.monotonic() - steps[name], 1)
        say(f"  done in {steps[name]:.0f}s")

    step(f"debootstrap --variant=minbase {SUITE} from {MIRROR}")
    run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(root), MIRROR],
        label="debootstrap", log=log)
    configure_base(root)
    done()

    step("vagrant/provision.sh --test-tools in a chroot (as the Vagrantfile runs it)")
    copy_checkout(root / REPO_IN_GUEST.lstrip("/"))
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    policy = root / "usr/sbin/policy-rc.d"        # no daemon starts inside the chroot
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    secrets = root / "run/labkit-build"
    secrets.mkdir(parents=True, exist_ok=True)
    env = {"LABKIT_REPO": REPO_IN_GUEST, "LABKIT_VENV": VENV_IN_GUEST, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if ca_bundle():
        shutil.copy(ca_bundle(), secrets / "ca.crt")
        env["PIP_CERT"] = "/run/labkit-build/ca.crt"
        say(f"  pip in the chroot trusts {ca_bundle()} (LABKIT_GUEST_CA_BUNDLE)")
    if pip_conf():
        shutil.copy(pip_conf(), secrets / "pip.conf")
        env["PIP_CONFIG_FILE"] = "/run/labkit-build/pip.conf"
        say(f"  pip in the chroot reads {pip_conf()} (LABKIT_GUEST_PIP_CONF)")
    with Chroot(root) as ch:
        run(ch.argv("bash", f"{REPO_IN_GUEST}/vagrant/provision.sh", "--test-tools", env=env),
            label="provision.sh", log=log)
        done()
        step("cloud-init (disabled at boot, for its offline schema check) and Debian's initramfs")
        run(ch.argv("apt-get", "install", "-y", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0",
                    "cloud-init"), label="apt-get install cloud-init", log=log)
        (root / "etc/cloud").mkdir(parents=True, exist_ok=True)
        (root / "etc/cloud/cloud-init.disabled").write_text("the lab's guest test tier: not a cloud VM\n")
        versions = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
        if not versions:
            raise RuntimeError("provision.sh installed no kernel into the image (linux-image-amd64)")
        kver = versions[-1]
        run(ch.argv("update-initramfs", "-c", "-k", kver), label="update-initramfs", log=log)
        run(ch.argv("apt-get", "clean"), label="apt-get clean", log=log)
    shutil.rmtree(secrets)
    policy.unlink()
    shutil.rmtree(root / REPO_IN_GUEST.lstrip("/"))
    (root / REPO_IN_GUEST.lstrip("/")).mkdir()
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    done()

    step("ext4 file system from the tree (mkfs.ext4 -d)")
    kernel, initrd = work / "vmlinuz", work / "initrd.img"
    shutil.copy(root / f"boot/vmlinuz-{kver}", kernel)
    shutil.copy(root / f"boot/initrd.img-{kver}", initrd)
    used = int(subprocess.run(["du", "-sxb", str(root)], capture_output=True, text=True, check=True)
               .stdout.split()[0])
    size_mib = used // 2**20 + 3072            # room for what the tests write (docker, labkit layers)
    disk = work / "disk.raw"
    run(["mkfs.ext4", "-q", "-F", "-L", "deep-dive-lab", "-d", str(root), str(disk), f"{size_mib}M"],
        label="mkfs.ext4", log=log)
    shutil.rmtree(root)
    done()

    step("first boot (systemd, writable): provision.sh --lab as Vagrant runs it in the booted box")
    from tests.guest import boot  # noqa: PLC0415 - the boot module imports this one
    result = boot.boot_guest(boot.BootSpec(disk=disk, kernel=kernel, initrd=initrd, mode="provision",
                                           snapshot=False, timeout=1500))
    if result.returncode != 0:
        raise RuntimeError(f"provisioning inside the booted guest failed (exit {result.returncode}); "
                           "see the console lines above")
    done()

    # move the finished image into place (the old one goes only now)
    final = {"disk": cache / "disk.raw", "kernel": cache / "vmlinuz", "initrd": cache / "initrd.img"}
    (cache / "image.json").unlink(missing_ok=True)
    for name, dest in final.items():
        os.replace(work / dest.name, dest)
    shutil.move(str(log), cache / "build.log")
    shutil.rmtree(work, ignore_errors=True)
    image = Image(disk=final["disk"], kernel=final["kernel"], initrd=final["initrd"], key=key,
                  kernel_version=kver, built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  build_seconds=round(time.monotonic() - t_start, 1), steps=steps)
    (cache / "image.json").write_text(json.dumps(image.as_dict(), indent=2))
    say(f"image ready in {image.build_seconds:.0f}s: {image.disk} "
        f"({image.disk.stat().st_blocks * 512 / 2**30:.1f} GiB on disk), kernel {kver}")
    return image


def ensure(cache: Path = CACHE, rebuild: bool = False) -> Image:
    # LABKIT_GUEST_STALE_OK=1: a debugging aid - boot whatever image is cached, even if a key file changed
    stale_ok = os.environ.get("LABKIT_GUEST_STALE_OK") == "1"
    image = None if rebuild else cached(cache, stale_ok=stale_ok)
    if image is not None and image.key != image_key():
        say(f"LABKIT_GUEST_STALE_OK=1: booting the cached image {image.key} although the key files say "
            f"{image_key()} (packages or venv may be behind the checkout)")
        return image
    if image is not None:
        say(f"reusing the cached image {image.disk} (key {image.key}, built {image.built_at} in "
            f"{image.build_seconds:.0f}s): vagrant/packages.txt, pyproject.toml, the lock file and "
            "provision.sh are unchanged")
        return image
    if cache.joinpath("image.json").exists():
        say("the cached image is stale (a key file changed): rebuilding")
    return build(cache)
