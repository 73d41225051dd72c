"""Capability names and Docker's add/drop rule (no root needed)."""
import pytest

from labkit import capabilities as caps
from labkit.errors import InvalidValue


def test_numbers_follow_the_kernel_header():
    assert caps.NAMES.index("SYS_ADMIN") == 21 and caps.NAMES.index("MKNOD") == 27
    assert caps.NAMES.index("CHECKPOINT_RESTORE") == 40


def test_dockers_default_mask_is_the_one_docker_containers_show():
    mask = sum(1 << caps.NAMES.index(name) for name in caps.DOCKER_DEFAULT)
    assert f"{mask:016x}" == "00000000a80425fb"   # CapEff of a default `docker run` container


@pytest.mark.parametrize("spelling", ["sys_admin", "CAP_SYS_ADMIN", "SYS_ADMIN", " cap_sys_admin "])
def test_names_are_accepted_as_docker_and_runc_write_them(spelling):
    assert caps.canonical(spelling) == "SYS_ADMIN"


def test_add_and_drop_follow_dockers_rule():
    assert "SYS_ADMIN" in caps.effective_set(cap_add=["SYS_ADMIN"])
    assert "NET_RAW" not in caps.effective_set(cap_drop=["NET_RAW"])
    assert caps.effective_set(cap_drop=["ALL"], cap_add=["KILL"]) == {"KILL"}
    assert caps.effective_set(cap_add=["ALL"]) == set(caps.NAMES)


@pytest.mark.parametrize("bad", ["SYS_ROOT", "", "CAP_", "sys admin"])
def test_an_unknown_capability_is_refused_by_name(bad):
    with pytest.raises(InvalidValue) as info:
        caps.effective_set(cap_add=[bad])
    assert repr(bad) in str(info.value)
