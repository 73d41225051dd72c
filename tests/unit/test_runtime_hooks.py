"""labkit-runtime's OCI hooks, run for real: the state on stdin, the environment, failures by name."""
import json
import os

import pytest

from labkit.errors import LabkitError
from labkit.runtime import hooks


def sh(script: str, **more) -> dict:
    return {"path": "/bin/sh", "args": ["sh", "-c", script], **more}


def test_a_hook_gets_the_state_on_its_stdin_and_only_its_own_environment(tmp_path):
    seen = tmp_path / "seen"
    hooks.run({"prestart": [sh(f'cat > {seen}; echo "$GREETING ${{HOME:-no-home}}" >> {seen}',
                               env=["GREETING=hi"])]},
              "prestart", {"id": "box", "pid": 42})
    state, env_line = seen.read_text().rsplit("}", 1)
    assert json.loads(state + "}") == {"id": "box", "pid": 42}
    assert env_line.strip() == "hi no-home"


def test_hooks_of_other_kinds_do_not_run(tmp_path):
    hooks.run({"poststop": [sh(f"touch {tmp_path}/ran")]}, "prestart", {})
    assert not (tmp_path / "ran").exists()


def test_a_failing_hook_is_an_error_naming_it_with_its_status_and_output():
    with pytest.raises(LabkitError, match=r"hooks\.poststop\[1\] /bin/sh failed \(status 3\): nope"):
        hooks.run({"poststop": [sh("true"), sh("echo nope >&2; exit 3")]}, "poststop", {})


def test_a_hook_that_does_not_read_its_stdin_is_fine():
    hooks.run({"prestart": [sh("exec 0<&-; true")]}, "prestart", {"id": "x" * 100_000})


def test_a_hook_past_its_timeout_is_killed_and_named(tmp_path):
    pid_file = tmp_path / "pid"
    with pytest.raises(LabkitError, match=r"hooks\.prestart\[0\] /bin/sh did not finish within 1 s"):
        hooks.run({"prestart": [sh(f"echo $$ > {pid_file}; exec sleep 60", timeout=1)]}, "prestart", {})
    with pytest.raises(ProcessLookupError):     # killed and collected, not left running
        os.kill(int(pid_file.read_text()), 0)


def test_a_missing_hook_program_is_an_error_naming_it():
    with pytest.raises(LabkitError, match=r"hooks\.prestart\[0\] /nonexistent/hook: No such file"):
        hooks.run({"prestart": [{"path": "/nonexistent/hook"}]}, "prestart", {})
