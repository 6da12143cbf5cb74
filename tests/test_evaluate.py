"""solve / accuracy / coverage."""

from __future__ import annotations

import pytest

from workbench.evaluate import Attempt, accuracy, coverage, solve
from workbench.tasks import arithmetic_problems


def _a(pid, ok):
    return Attempt(pid, 1, "q", "t", 1 if ok else None, ok, 1)


def test_accuracy_and_coverage_exact():
    r1 = [_a("a", True), _a("b", False), _a("c", False)]
    r2 = [_a("a", False), _a("b", True), _a("c", False)]
    assert accuracy(r1) == pytest.approx(1 / 3)
    assert coverage([r1, r2]) == pytest.approx(2 / 3)
    assert coverage([r1]) == accuracy(r1)
    with pytest.raises(ValueError):
        coverage([r1, r2[:2]])
    with pytest.raises(ValueError):
        accuracy([])


def test_solve_scores_and_batching(smol):
    """Scores come from the task parser; batch size does not change greedy answers."""
    from workbench.tasks import extract_answer, is_correct

    probs = arithmetic_problems(2, steps=1, digits=1, seed=1)
    out = solve(smol, probs, batch_size=2, max_new_tokens=2)
    one = solve(smol, probs, batch_size=1, max_new_tokens=2)
    assert [a.problem_id for a in out] == [p.id for p in probs]
    assert [a.text for a in out] == [a.text for a in one]
    for a, p in zip(out, probs):
        assert a.prediction == extract_answer(a.text)
        assert a.correct == is_correct(a.prediction, p.answer)
        assert 1 <= a.n_tokens <= 2


def test_solve_bad_input(smol):
    with pytest.raises(ValueError):
        solve(smol, [])
    with pytest.raises(ValueError):
        solve(smol, arithmetic_problems(1, seed=0), batch_size=0)
    with pytest.raises(ValueError):
        solve(smol, ["not a problem"])
