"""Notebook 33-oci-images and labkit.ociimage: each checked property broken on purpose fails its check;
the exercise's checker accepts the solution and refuses wrong answers."""
from __future__ import annotations

import pytest

from notebook_session import NotebookSession

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
    with NotebookSession(NOTEBOOK, replace=replace) as nb:
        failure = nb.run_until_error()
    assert failure is not None, f"{prop}: broken on purpose, yet every cell passed"
    assert failure.ename == "AssertionError" and failure.cell_contains(check), \
        f"{prop}: expected the check with {check!r} to fail, got {failure.ename}: {failure.evalue} in\n{failure.source}"


SOLUTION = ('mine = ociimage.layer_tar(ociimage.LayerSpec(files={"etc/greeting": "hello\\n"}, delete=("etc/hostname",)))\n'
            'ociimage.write_layout(exercise_dir, [base_tar, mine], cmd=["sh"])\n'
            'print(check_own_layer(ociimage.sha256(mine))[0])')
NO_WHITEOUT = ('shutil.rmtree(exercise_dir)\n'
               'mine = ociimage.layer_tar(ociimage.LayerSpec(files={"etc/greeting": "hello\\n"}))\n'
               'ociimage.write_layout(exercise_dir, [base_tar, mine], cmd=["sh"])\n'
               'print(check_own_layer(ociimage.sha256(mine))[0])')
BASE_DIGEST = 'print(check_own_layer(ociimage.sha256(base_tar))[0])'
CONFIG_DIGEST = ('cfg = json.loads((exercise_dir / "index.json").read_text())["manifests"][0]["digest"]\n'
                 'print(check_own_layer(cfg)[0])')


def test_the_exercise_checker_accepts_the_solution_and_refuses_wrong_answers():
    with NotebookSession(NOTEBOOK) as nb:
        nb.run_until("SelfCheck(")
        assert nb.execute(SOLUTION).strip() == "True"
        assert nb.execute(CONFIG_DIGEST).strip() == "False", "the manifest's digest is not a layer"
        assert nb.execute(NO_WHITEOUT).strip() == "False", "a layer without the whiteout"
        assert nb.execute(BASE_DIGEST).strip() == "False", "the base layer's digest"
        assert nb.run_until_error() is None
