"""Notebook 32-security: each checked property, broken on purpose, makes exactly its check fail; and
the exercise's checker is tested in test_checkers.py - all in a real kernel.
"""
from __future__ import annotations

import pytest

from labkit import dockerd
from labkit.cgroups import backend_name

from notebook_session import assert_check_fails

pytestmark = pytest.mark.root

NOTEBOOK = "32-security.ipynb"

# property -> (the change that breaks it, a line of the check that must then fail)
BROKEN = {
    "container root keeps only Docker's 14": (
        {'plain = start("exec sleep 600")': 'plain = start("exec sleep 600", cap_add=["SYS_ADMIN"])'},
        "assert inside == capabilities.DOCKER_DEFAULT"),
    "cap_add grants the mount": (
        {'cap_add=["SYS_ADMIN", "NET_ADMIN"])': 'cap_add=["NET_ADMIN"])'},
        'assert seen["cap_add"] == (True, True)'),
    "no_new_privs stops the setuid gain": (
        {"no_new_privs=flag)": "no_new_privs=False)"},
        "assert (with_nnp.real, with_nnp.effective, with_flag)"),
    "the seccomp filter refuses mkdir": (
        {"filtered_box = start(MKDIR, seccomp=no_mkdir)": "filtered_box = start(MKDIR)"},
        'assert result["filter"] == (2, False)'),
    "Filter(['unshare']) refuses unshare": (
        {'{"seccomp": seccomp.Filter(["unshare"])}': "{}"},
        "assert not refused(outcome[\"labkit, no filter\"])"),
    "Docker's lists mask and protect": (
        {"masked_paths=security.DOCKER_MASKED_PATHS, readonly_paths=security.DOCKER_READONLY_PATHS": ""},
        'assert sys_ro["docker"] is not None'),
    "rootless root cannot do what real root can": (
        {'"rootless root": rootless.run(["sh", "-c", ATTEMPTS]).stdout':
         '"rootless root": run(["sh", "-c", ATTEMPTS], "mnt").stdout'},
        'assert table["rootless root"][action].startswith("refused")'),
}


@pytest.mark.parametrize("prop", BROKEN)
def test_a_broken_property_fails_its_check(prop):
    replace, check = BROKEN[prop]
    assert_check_fails(NOTEBOOK, replace, check, prop)


def test_dockers_default_profile_check_fails_when_the_container_runs_unconfined():
    assert dockerd.available(), "docker.io is provisioned (vagrant/packages.txt)"
    replace = {'("docker, default profile", [])': '("docker, default profile", ["--security-opt", "seccomp=unconfined"])'}
    assert_check_fails(NOTEBOOK, replace, '"Seccomp: 2" in', "Docker's default profile")


def test_the_cgroup_check_fails_when_the_learner_gets_what_it_should_not():
    if backend_name() == "v2":     # no delegation: the learner cannot even create its child cgroup
        replace = {"attempts = rootless.run([\"sh\", \"-c\", CGROUP_TRY], cgroup=delegated).stdout":
                   "attempts = rootless.run([\"sh\", \"-c\", CGROUP_TRY]).stdout",
                   "delegated = rootless.Delegation(group, learner)": "delegated = None"}
        check = 'assert cgroup_table["create a child cgroup"] == "ok"'
    else:                          # v1 "delegated" by a chown: the learner could create cgroups
        replace = {"    attempts = rootless.run([\"sh\", \"-c\", CGROUP_TRY]).stdout":
                   "    os.chown(top, learner.uid, learner.gid)\n"
                   "    attempts = rootless.run([\"sh\", \"-c\", CGROUP_TRY]).stdout"}
        check = 'assert all(outcome.startswith("refused")'
    assert_check_fails(NOTEBOOK, replace, check, f"cgroups on {backend_name()}")
