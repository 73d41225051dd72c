"""Exercises that check a learner's answer against the kernel's real state.

A notebook ends with something like::

    SelfCheck(
        "Which inode does the new UTS namespace have?",
        check=lambda answer: (int(answer) == identity(box.pid)["uts"], "compare with /proc/PID/ns/uts"),
        hint="readlink /proc/<pid>/ns/uts prints uts:[INODE]",
    )

The check function receives the learner's answer (a string) and returns ``(correct, explanation)``;
it should look at /proc, /sys/fs/cgroup or netlink - never compare with a stored string. The first
wrong answer shows the hint; the explanation is shown every time. Solutions live in
docs/instructor/solutions/, where instructors look and learners don't stumble.
"""
from __future__ import annotations

from typing import Callable

Checker = Callable[[str], "tuple[bool, str]"]


class SelfCheck:
    def __init__(self, question: str, check: Checker, hint: str, placeholder: str = "your answer"):
        self.question, self._check, self.hint, self.placeholder = question, check, hint, placeholder
        self.attempts = 0
        self.solved = False

    def verify(self, answer: str) -> tuple[bool, str]:
        """Check one answer; what the button does, usable from code and tests too."""
        self.attempts += 1
        try:
            correct, explanation = self._check(str(answer).strip())
        except Exception as exc:  # a malformed answer is a wrong answer, never a traceback
            correct, explanation = False, f"could not check {answer!r}: {exc}"
        self.solved = self.solved or correct
        return correct, explanation

    def feedback(self, answer: str) -> str:
        """The text a learner sees after pressing Check."""
        correct, explanation = self.verify(answer)
        if correct:
            return f"Correct. {explanation}"
        return f"Not yet. {explanation}\nHint: {self.hint}"

    def widget(self):
        import ipywidgets as w

        answer = w.Text(placeholder=self.placeholder, layout=w.Layout(width="40%"))
        button = w.Button(description="Check", button_style="primary")
        result = w.HTML()

        def on_click(_):
            text = self.feedback(answer.value)
            color = "green" if text.startswith("Correct") else "#b35900"
            body = text.replace("&", "&amp;").replace("<", "&lt;").replace("\n", "<br>")
            result.value = f"<span style='color:{color}'>{body}</span>"

        button.on_click(on_click)
        answer.on_submit(lambda _: on_click(None))
        return w.VBox([w.HTML(f"<b>Exercise.</b> {self.question}"), w.HBox([answer, button]), result])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget())
