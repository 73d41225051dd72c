"""rootless: the subordinate id ranges are read from /etc/subuid's format (no root needed)."""
from __future__ import annotations

import pytest

from labkit import rootless
from labkit.errors import NotFound


def test_a_users_range_is_found(tmp_path):
    subuid = tmp_path / "subuid"
    subuid.write_text("vagrant:100000:65536\nlabkit-learner:165536:65536\n")
    assert rootless.subordinate_range("labkit-learner", str(subuid)) == (165536, 65536)


@pytest.mark.parametrize("content", ["vagrant:100000:65536\n", None])
def test_a_missing_range_says_who_adds_one(tmp_path, content):
    subuid = tmp_path / "subuid"
    if content is not None:
        subuid.write_text(content)
    with pytest.raises(NotFound, match="provision"):
        rootless.subordinate_range("labkit-learner", str(subuid))


def test_the_maps_put_root_on_the_users_own_id():
    who = rootless.Learner("l", 999, 995, (100000, 65536), (200000, 65536))
    assert who.uid_map.splitlines() == ["0 999 1", "1 100000 65536"]
    assert who.gid_map.splitlines() == ["0 995 1", "1 200000 65536"]
