"""Notebook 33-oci-images and labkit.ociimage: each checked property broken on purpose fails its check;
the exercise's checker is tested in test_checkers.py."""
from __future__ import annotations

import pytest

from notebook_session import assert_check_fails

pytestmark = pytest.mark.root

NOTEBOOK = "33-oci-images.ipynb"

BROKEN = {
    "a whiteout deletes": (
        {'delete=("etc/motd",), ': ""},
        'assert "etc/.wh.motd" in names'),
    "a whiteout hides the file in the running container": (
        {'delete=("etc/motd",), ': "", 'assert "etc/.wh.motd" in names and ': "assert "},
        'assert not os.path.lexists(f"{seen_root}/etc/motd")'),
    "an opaque directory hides what is below": (
        {'opaque=("app/data",)': "opaque=()", 'and "app/data/.wh..wh..opq" in names': ""},
        'assert sorted(os.listdir(f"{seen_root}/app/data")) == ["c"]'),
    "a tampered blob is refused": (
        {"data[len(data) // 2] ^= 0x01": "data[len(data) // 2] ^= 0x00"},
        'assert tamper_verdict.startswith("refused")'),
    "Docker's deletion travels in the saved image": (
        {'"rm /etc/os-release && echo made by docker > /etc/greeting"': '"echo made by docker > /etc/greeting"'},
        'assert "etc/.wh.os-release" in commit_layer.getnames()'),
}


@pytest.mark.parametrize("prop", BROKEN)
def test_a_broken_property_fails_its_check(prop):
    replace, check = BROKEN[prop]
    assert_check_fails(NOTEBOOK, replace, check, prop)
