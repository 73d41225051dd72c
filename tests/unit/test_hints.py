"""No exercise hint gives the answer away: a hint says where to look, the solving code lives only in
docs/instructor/solutions/. Each notebook's SelfCheck hints are read from the notebook's source (what
the learner sees) and compared with the calls and commands of its solution key. And predict, then run:
every Predict a notebook makes is revealed beside the kernel's answer, and each chapter has one."""
from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import nbformat
import pytest

from labkit import workbook

SOLUTIONS = Path(__file__).resolve().parents[2] / "docs" / "instructor" / "solutions"
# Calls too general to give anything away when named in a hint.
HARMLESS = set(dir(builtins)) | {"read", "split", "strip", "items", "values", "keys", "append", "get", "join"}


def python_source(cell_source: str) -> str:
    """The cell as Python: IPython's magics and shell escapes commented out."""
    return "\n".join("#" + line if line.lstrip().startswith(("%", "!")) else line
                     for line in cell_source.splitlines())


def _text(node) -> str:
    """A hint's text: string constants as they are, f-string fields as {...}."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{...}" for v in node.values)
    if isinstance(node, ast.BinOp):
        return _text(node.left) + _text(node.right)
    raise AssertionError(f"a hint that is not a string: {ast.dump(node)[:80]}")


def hints_of(notebook: Path) -> list[list[str]]:
    """The hints of every SelfCheck(...) call in the notebook, one list per exercise."""
    found = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code" or "SelfCheck(" not in cell.source:
            continue
        for node in ast.walk(ast.parse(python_source(cell.source))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "SelfCheck":
                hints = []
                for kw in node.keywords:
                    if kw.arg == "hint":
                        hints.append(_text(kw.value))
                    elif kw.arg == "hints":
                        hints.extend(_text(e) for e in kw.value.elts)
                hints.extend(_text(a) for a in node.args[2:3])
                found.append(hints)
    return found


def dotted(func) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        inner = dotted(func.value)
        return f"{inner}.{func.attr}" if inner else func.attr
    return ""


def solving_fragments(key: Path) -> set[str]:
    """What a hint must not contain: every line of the key's code blocks, and `name(` of every call in
    its Python blocks (also the call's last part: `ex.set(` and `set(`)."""
    fragments = set()
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", key.read_text(), re.S):
        if lang == "python":
            fragments.update(line.split("  #")[0].strip() for line in body.splitlines()
                             if line.strip() and not line.strip().startswith("#") and len(line.strip()) > 12)
            for node in ast.walk(ast.parse(body)):
                if isinstance(node, ast.Call) and (name := dotted(node.func)):
                    for part in {name, name.split(".")[-1]} - HARMLESS:
                        fragments.add(part + "(")
        elif lang in ("sh", "bash", "console"):
            for line in body.splitlines():
                command = line.split("#")[0].strip()
                if command:
                    fragments.add(" ".join(command.split()))
    return fragments


def normal(text: str) -> str:
    return " ".join(text.replace("`", "").split())


EXERCISED = [nb for nb in workbook.present() if "SelfCheck(" in nb.path.read_text()]


@pytest.mark.parametrize("notebook", EXERCISED, ids=lambda nb: nb.file)
def test_no_hint_contains_the_solving_call(notebook):
    key = SOLUTIONS / notebook.file.replace(".ipynb", ".md")
    assert key.exists(), f"{notebook.file} has an exercise but no solution key {key.name}"
    fragments = solving_fragments(key)
    assert fragments, f"{key.name} shows no solving code"
    exercises = hints_of(notebook.path)
    assert exercises
    for hints in exercises:
        assert hints, f"{notebook.file}: a SelfCheck without hints"
        for hint in hints:
            leaked = [f for f in fragments if normal(f) in normal(hint)]
            assert not leaked, f"{notebook.file}: hint {hint!r} contains the solution's {leaked}"


def test_the_fragments_would_catch_the_old_leaking_hints():
    """The rule is not empty: hints as they were before the teaching pass fail it."""
    key = SOLUTIONS / "12-cpu.md"
    old = "ex.set(cpu=0.3); the quota is 0.3 x the period (100000 us)"
    assert any(normal(f) in normal(old) for f in solving_fragments(key))
    old00 = "`stat -f -c %T /sys/fs/cgroup` prints tmpfs (v1/hybrid) or cgroup2fs (v2)"
    assert any(normal(f) in normal(old00) for f in solving_fragments(SOLUTIONS / "00-welcome.md"))


def predictions_of(notebook: Path) -> tuple[set[str], set[str]]:
    """(names bound to a Predict(...), names whose .reveal(...) is called) in the notebook's code."""
    made, revealed = set(), set()
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(python_source(cell.source))):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                    and dotted(node.value.func).split(".")[-1] == "Predict":
                made.update(t.id for t in node.targets if isinstance(t, ast.Name))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "reveal":
                revealed.add(dotted(node.func.value))
    return made, revealed


@pytest.mark.parametrize("notebook", workbook.present(), ids=lambda nb: nb.file)
def test_every_prediction_is_revealed_beside_the_kernels_answer(notebook):
    """Predict, then run: a prediction the learner commits to is shown beside what the kernel did."""
    made, revealed = predictions_of(notebook.path)
    assert made <= revealed, f"{notebook.file}: predictions never revealed: {sorted(made - revealed)}"


def test_each_chapter_asks_for_a_prediction_before_its_key_experiment():
    chapters = {}
    for nb in workbook.present():
        chapters.setdefault(nb.chapter, set()).update(predictions_of(nb.path)[0])
    assert chapters and all(chapters.values()), [c for c, made in chapters.items() if not made]


def code_cells(notebook: Path) -> list[str]:
    return [c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("notebook", [nb for nb in workbook.present() if nb.chapter == "1 namespaces"],
                         ids=lambda nb: nb.file)
def test_each_namespace_notebook_shows_the_bare_call_in_a_child_process(notebook):
    """Once per notebook the mechanism appears with nothing in between: unshare(2) from plain Python
    (os.unshare on 3.12+, libc's through ctypes on 3.11), in a fresh interpreter - never the kernel."""
    bare = [source for source in code_cells(notebook.path) if source.startswith("%%python3")
            and "os.unshare(" in source and "ctypes" in source and not re.search(r"(from|import) labkit", source)]
    assert bare, f"{notebook.file}: no %%python3 cell calls unshare(2) without labkit"


@pytest.mark.parametrize("notebook", [nb for nb in workbook.present() if nb.chapter == "2 cgroups"],
                         ids=lambda nb: nb.file)
def test_each_cgroup_notebook_writes_a_limit_with_plain_open(notebook):
    """Once per notebook a limit is set the bare way - open(path, "w").write(...) - before labkit does it."""
    assert any(re.search(r"""open\([^\n]*,\s*["']w["']\)\.write\(""", source)
               for source in code_cells(notebook.path)), f"{notebook.file}: no plain open(..., 'w').write(...)"
