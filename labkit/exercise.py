"""Exercises that check a learner's answer against the kernel's real state, and predictions.

A notebook ends with something like::

    SelfCheck(
        "Host pid of a process with its own hostname labkit-exercise:",
        check=lambda pid: checkers.own_hostname(pid, "labkit-exercise"),
        parse=int,
        hints=("Which namespace holds a hostname? Section 2 started one.",
               "spawn() takes the kinds to unshare and a hostname= ..."),
    )

Three outcomes, told apart so a learner never blames themselves for a bug:

- the answer cannot be read (``parse`` raises, or the checker raises ``NotYet``): "Not yet", with why;
- the checker looked at the kernel and said no: "Not yet", its explanation, then a hint - the first
  hint after one miss (where to look), the next, more concrete one after further misses;
- the checker itself raised anything else: a **checker fault**, shown with the error. That is a bug
  in the notebook, not a wrong answer; tests call ``evaluate`` and fail on it.

Checkers live in ``labkit.checkers`` (tests run them against the instructor's solutions); solutions
live in docs/instructor/solutions/, where instructors look and learners don't stumble.

``Predict`` is the other half of an experiment: before running it the learner commits to a guess; the
experiment's cell then shows the kernel's answer beside it (``reveal``).
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Callable, Sequence

Checker = Callable[[Any], "tuple[bool, str]"]

# How many misses before the second hint appears.
SECOND_HINT_AFTER = 2


class NotYet(Exception):
    """Raised by a checker for an answer that is wrong before the kernel is even asked
    (there is no such process, the file does not exist yet ...). Shown as "Not yet", never as a fault."""


@dataclass(frozen=True)
class Verdict:
    status: str          # "correct", "not yet" or "checker fault"
    explanation: str

    @property
    def correct(self) -> bool:
        return self.status == "correct"


class SelfCheck:
    def __init__(self, question: str, check: Checker, hint: "str | Sequence[str]" = (), *,
                 hints: Sequence[str] = (), parse: Callable[[str], Any] = str,
                 placeholder: str = "your answer"):
        self.question, self._check, self._parse, self.placeholder = question, check, parse, placeholder
        self.hints = tuple([hint] if isinstance(hint, str) else hint) + tuple(hints)
        if not self.hints:
            raise ValueError("a SelfCheck needs at least one hint (where to look, not the answer)")
        self.attempts = 0
        self.misses = 0
        self.solved = False

    @property
    def hint(self) -> str:
        """The hint a learner sees now: the first after one miss, the next ones after further misses."""
        step = 0 if self.misses < SECOND_HINT_AFTER else min(self.misses - SECOND_HINT_AFTER + 1,
                                                             len(self.hints) - 1)
        return self.hints[step]

    def evaluate(self, answer: str) -> Verdict:
        """Check one answer and say which of the three outcomes it is (what tests call)."""
        self.attempts += 1
        text = str(answer).strip()
        try:
            value = self._parse(text)
        except (ValueError, TypeError) as exc:
            return self._miss(f"could not read {text!r} as {_kind(self._parse)} ({exc})")
        try:
            correct, explanation = self._check(value)
        except NotYet as exc:
            return self._miss(str(exc))
        except Exception as exc:   # the checker's bug, not the learner's: say so, with the error
            return Verdict("checker fault", f"the checker itself failed - {type(exc).__name__}: {exc}. "
                                            "This is a bug in the notebook, not your answer; tell your instructor.")
        if correct:
            self.solved = True
            return Verdict("correct", explanation)
        return self._miss(explanation)

    def _miss(self, explanation: str) -> Verdict:
        self.misses += 1
        return Verdict("not yet", explanation)

    def verify(self, answer: str) -> "tuple[bool, str]":
        """(correct, explanation), for code that only needs a yes or no."""
        verdict = self.evaluate(answer)
        return verdict.correct, verdict.explanation

    def feedback(self, answer: str) -> str:
        """The text a learner sees after pressing Check."""
        return self._feedback(answer)[1]

    def _feedback(self, answer: str) -> "tuple[Verdict, str]":
        verdict = self.evaluate(answer)
        if verdict.status == "correct":
            return verdict, f"Correct. {verdict.explanation}"
        if verdict.status == "checker fault":
            return verdict, f"Checker fault: {verdict.explanation}"
        more = "" if self.misses >= SECOND_HINT_AFTER or len(self.hints) == 1 else \
            " (miss again for a more concrete hint)"
        return verdict, f"Not yet. {verdict.explanation}\nHint{more}: {self.hint}"

    def widget(self):
        import ipywidgets as w

        answer = w.Text(placeholder=self.placeholder, continuous_update=False, layout=w.Layout(width="40%"))
        button = w.Button(description="Check", button_style="primary")
        result = w.HTML()

        def on_click(_):
            verdict, text = self._feedback(answer.value)
            color = {"correct": "green", "checker fault": "#c00000"}.get(verdict.status, "#b35900")
            result.value = f"<span style='color:{color}'>{_html(text)}</span>"

        button.on_click(on_click)
        answer.observe(lambda _: on_click(None), "value")      # Enter (or leaving the box) checks too
        return w.VBox([w.HTML(f"<b>Exercise.</b> {html.escape(self.question)}"), w.HBox([answer, button]),
                       result])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget())


class Predict:
    """Commit to a prediction before the experiment; the experiment's cell then reveals the kernel's answer.

    In the cell before an experiment::

        guess = Predict("A hog allocates 100 MiB in a 50 MiB group. What happens?",
                        ["it gets 50 MiB and goes on", "malloc returns NULL", "the kernel kills it"])
        guess

    and in the experiment's cell, once the kernel has answered::

        guess.reveal("the kernel kills it", evidence="memory.events: oom_kill 1")
    """

    def __init__(self, question: str, choices: Sequence[str]):
        if len(choices) < 2:
            raise ValueError("a prediction needs at least two choices")
        self.question, self.choices = question, tuple(choices)
        self.prediction: "str | None" = None

    def commit(self, choice: str) -> None:
        """Record the prediction (what the widget's button does); once made, it cannot change."""
        if choice not in self.choices:
            raise ValueError(f"{choice!r} is not one of the choices: {', '.join(self.choices)}")
        if self.prediction is None:
            self.prediction = choice

    def reveal(self, actual: str, evidence: str = "") -> str:
        """Print the prediction beside what the kernel did, and return that text."""
        if actual not in self.choices:
            raise ValueError(f"the kernel's answer {actual!r} is not one of the choices")
        said = self.prediction or "(no prediction committed)"
        verdict = "" if self.prediction is None else \
            ("  - as you predicted" if self.prediction == actual else "  - not what you predicted: why?")
        lines = [f"you predicted: {said}", f"the kernel:    {actual}{verdict}"]
        if evidence:
            lines.append(f"evidence:      {evidence}")
        text = "\n".join(lines)
        print(text)
        return text

    def widget(self):
        import ipywidgets as w

        options = w.RadioButtons(options=self.choices, value=None, layout=w.Layout(width="auto"))
        button = w.Button(description="Commit", button_style="primary")
        status = w.HTML("Choose, commit, then run the next cell.")

        def on_click(_):
            if options.value is None:
                status.value = "Choose one first."
                return
            self.commit(options.value)
            options.disabled = button.disabled = True
            status.value = f"Committed: <b>{html.escape(self.prediction)}</b>. Now run the next cell."

        button.on_click(on_click)
        return w.VBox([w.HTML(f"<b>Predict, then run.</b> {html.escape(self.question)}"), options,
                       w.HBox([button, status])])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget())


def _kind(parse) -> str:
    return {int: "a whole number", float: "a number"}.get(parse, getattr(parse, "__name__", "an answer"))


def _html(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")
