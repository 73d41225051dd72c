"""SelfCheck's three outcomes, its hint ladder, and Predict - no kernel needed."""
import pytest

from labkit.exercise import NotYet, Predict, SelfCheck


def is_seven(value):
    return value == 7, f"you said {value}"


def test_correct_and_wrong_answers():
    ex = SelfCheck("Seven?", is_seven, hints=("think of a week", "count the days Monday..Sunday"), parse=int)
    assert ex.evaluate("7").status == "correct"
    verdict = ex.evaluate(" 8 ")
    assert verdict.status == "not yet" and verdict.explanation == "you said 8"
    assert ex.solved and ex.attempts == 2


def test_malformed_answer_is_not_yet_not_a_fault():
    ex = SelfCheck("Seven?", is_seven, hints=("a",), parse=int)
    verdict = ex.evaluate("seven")
    assert verdict.status == "not yet" and "whole number" in verdict.explanation


def test_checker_raising_notyet_is_a_wrong_answer():
    def no_such_process(pid):
        raise NotYet(f"there is no process {pid}")
    verdict = SelfCheck("pid?", no_such_process, hints=("a",), parse=int).evaluate("123")
    assert verdict.status == "not yet" and verdict.explanation == "there is no process 123"


def test_checker_bug_is_reported_as_a_fault_with_the_error():
    def buggy(answer):
        return {}["missing"], "never"
    ex = SelfCheck("?", buggy, hints=("a",))
    verdict = ex.evaluate("x")
    assert verdict.status == "checker fault" and "KeyError" in verdict.explanation
    assert ex.feedback("x").startswith("Checker fault:") and "'missing'" in ex.feedback("x")
    assert not ex.solved


def test_first_hint_then_a_more_concrete_one_after_repeated_misses():
    ex = SelfCheck("Seven?", is_seven, hints=("where to look", "more concrete"), parse=int)
    first = ex.feedback("1")
    assert first.endswith("where to look") and "miss again" in first
    second = ex.feedback("2")
    assert second.endswith("more concrete")
    assert ex.feedback("3").endswith("more concrete")       # the last hint stays


def test_a_single_hint_string_still_works_and_a_hint_is_required():
    assert SelfCheck("?", is_seven, hint="only one").hints == ("only one",)
    with pytest.raises(ValueError):
        SelfCheck("?", is_seven)


def test_verify_returns_correct_and_explanation():
    assert SelfCheck("?", is_seven, hints=("a",), parse=int).verify("7") == (True, "you said 7")


def test_widget_builds(monkeypatch):
    ex = SelfCheck("Seven?", is_seven, hints=("a", "b"), parse=int)
    box = ex.widget()
    answer, button = box.children[1].children
    answer.value = "5"
    button.click()
    assert "Not yet" in box.children[2].value


def test_predict_reveal_beside_the_prediction(capsys):
    guess = Predict("What happens?", ["killed", "slowed"])
    assert "no prediction" in guess.reveal("killed")
    guess.commit("slowed")
    guess.commit("killed")                 # a prediction, once committed, stays
    text = guess.reveal("killed", evidence="oom_kill 1")
    assert "you predicted: slowed" in text and "not what you predicted" in text and "oom_kill 1" in text
    assert "the kernel:    killed" in capsys.readouterr().out


def test_predict_refuses_unknown_choices():
    guess = Predict("?", ["a", "b"])
    with pytest.raises(ValueError):
        guess.commit("c")
    with pytest.raises(ValueError):
        guess.reveal("c")


def test_predict_widget_commits_once():
    guess = Predict("?", ["a", "b"])
    box = guess.widget()
    options, (button, status) = box.children[1], box.children[2].children
    options.value = "b"
    button.click()
    assert guess.prediction == "b" and options.disabled and "Committed" in status.value
