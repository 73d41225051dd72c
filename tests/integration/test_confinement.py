"""seccomp filters, setuid/no_new_privs and rootless processes, checked from /proc (labkit/seccomp.py,
security.py, rootless.py)."""
from __future__ import annotations

import psutil
import pytest

from labkit import rootless, seccomp, security
from labkit.cgroups import Cgroup, backend_name
from labkit.container import Container
from labkit.errors import InvalidValue, Unsupported
from labkit.namespaces import identity, spawn

pytestmark = pytest.mark.root


def test_a_containers_filter_is_loaded_and_answers_with_eperm_for_exec_too():
    with Container("busybox", ["sleep", "600"], seccomp=seccomp.Filter(["mkdir", "mkdirat"])) as box:
        box.start()
        assert seccomp.status(box.pid)["Seccomp"] == 2
        made = box.exec(["mkdir", "/tmp/x"])            # docker exec runs under the same profile
        assert made.returncode != 0 and "Operation not permitted" in made.stderr
        assert box.exec(["touch", "/tmp/y"]).returncode == 0


def test_with_no_new_privileges_the_filter_is_loaded_after_the_capabilities_are_dropped():
    with Container("busybox", ["sleep", "600"], seccomp=seccomp.Filter(["unshare"]),
                   no_new_privileges=True) as box:
        box.start()
        assert seccomp.status(box.pid) == {"NoNewPrivs": 1, "Seccomp": 2, "Seccomp_filters": 1}


def test_a_container_refuses_a_seccomp_option_that_is_not_a_filter():
    with pytest.raises(InvalidValue, match="seccomp"):
        Container("busybox", ["true"], seccomp="default.json")


@pytest.mark.parametrize("no_new_privs, effective", [(False, 0), (True, security.NOBODY)])
def test_a_setuid_root_copy_gives_root_only_without_no_new_privs(no_new_privs, effective):
    with security.setuid_copy("sleep") as (directory, program):
        steps, copy = security.setuid_steps(directory, program, no_new_privs=no_new_privs)
        with spawn([copy, "600"], "mnt", setup=steps) as proc:
            uids = psutil.Process(proc.pid).uids()
            assert (uids.real, uids.effective) == (security.NOBODY, effective)
            assert seccomp.status(proc.pid)["NoNewPrivs"] == int(no_new_privs)
            proc.kill()


def test_a_rootless_process_is_root_inside_and_the_learner_outside():
    who = rootless.learner()
    with rootless.spawn(["sleep", "600"]) as proc:
        with open(f"/proc/{proc.pid}/uid_map") as f:
            lines = [line.split() for line in f]
        assert lines == [["0", str(who.uid), "1"], ["1", str(who.subuid[0]), str(who.subuid[1])]]
        assert psutil.Process(proc.pid).uids().effective == who.uid
        assert identity(proc.pid)["user"] != identity()["user"]
        proc.kill()
    done = rootless.run(["sh", "-c", "id -u; cat /etc/shadow"])
    assert done.stdout.split()[0] == "0" and "Permission denied" in done.stderr


def test_delegation_is_refused_by_name_on_v1_and_works_on_v2():
    who = rootless.learner()
    with Cgroup.create(memory="64M") as group:
        if backend_name() != "v2":
            with pytest.raises(Unsupported, match="v2"):
                rootless.Delegation(group, who)
            return
        delegated = rootless.Delegation(group, who)
        done = rootless.run(["sh", "-c", f"cd {group.path('memory')} && mkdir mine && echo 8M > mine/memory.max"
                                         f" && echo $$ > mine/cgroup.procs && cat memory.max"], cgroup=delegated)
        assert done.returncode == 0, done.stderr
        with open(f"{group.path('memory')}/mine/memory.max") as f:
            assert int(f.read()) == 8 << 20
