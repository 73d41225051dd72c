"""The rule behind the named tuples and plain classes on the start paths, held by a test rather than
by comments: `labkit run` and labkit-runtime's `create` (four runtime calls on every `docker run`)
import neither dataclasses (about 5 ms of CPU) nor subprocess (2 ms, with locale and selectors);
`labkit run` not argparse (4 ms, with gettext and shutil: it parses its own arguments) nor the
starter's pickle and socket (it forks its one container itself). Each path is imported in a fresh
interpreter, as the command would import it; tests/integration/test_container.py checks what a
real `labkit run` has imported by its end."""
import subprocess
import sys

import pytest

PATHS = {
    "labkit run": (["labkit.cli", "labkit.container", "labkit.cleanup", "labkit.cgroups", "labkit.namespaces",
                    "labkit.start_stamps"], ["dataclasses", "argparse", "pickle", "socket", "subprocess"]),
    "labkit-runtime create": (["labkit.runtime.cli", "labkit.runtime.verbs", "labkit.runtime.create",
                               "labkit.runtime.cgroup", "labkit.runtime.setup", "labkit.runtime.state",
                               "labkit.runtime.spec", "labkit.runtime.hooks"], ["dataclasses", "subprocess"]),
    "labkit-runtime create --systemd-cgroup": (["labkit.runtime.create", "labkit.runtime.systemd"],
                                                ["dataclasses", "subprocess"]),
}


@pytest.mark.parametrize("path", PATHS)
def test_a_start_path_does_not_import_what_it_was_freed_of(path):
    modules, forbidden = PATHS[path]
    code = f"import sys\nimport {', '.join(modules)}\nprint(' '.join(m for m in {forbidden!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"{path} imports {done.stdout.strip()}"
