"""Tests for workbench.tasks (pure Python; no model needed)."""

from __future__ import annotations

import json
import re

import pytest

from workbench.tasks import (
    MAX_STEPS,
    Problem,
    TaskFormatError,
    arithmetic_problems,
    cot_text,
    difficulty_levels,
    extract_answer,
    format_target,
    gsm8k_sample,
    gsm8k_sample_path,
    is_correct,
    list_tasks,
    load_gsm8k,
    load_task,
    parse_number,
)

STEP_RE = re.compile(r"^(\d+) ([+\-*/]) (\d+) = (\d+)$")


def _check_chain(p: Problem) -> None:
    """Re-evaluate every 'a op b = c' step and check the chain ends at the answer."""
    assert p.steps, p.id
    value = p.meta["start"]
    assert str(value) in p.question
    for line in p.steps:
        m = STEP_RE.match(line)
        assert m, f"{p.id}: bad step line {line!r}"
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        assert a == value, f"{p.id}: step {line!r} does not continue from {value}"
        if op == "+":
            expect = a + b
        elif op == "-":
            expect = a - b
        elif op == "*":
            expect = a * b
        else:
            assert b != 0 and a % b == 0, f"{p.id}: division with remainder in {line!r}"
            expect = a // b
        assert expect == c, f"{p.id}: {line!r} is wrong"
        assert c >= 0
        assert str(b) in p.question, f"{p.id}: operand {b} not mentioned in the question"
        value = c
    assert value == p.answer
    assert isinstance(p.answer, int)


# ----------------------------------------------------------------------------- generator


def test_generation_is_deterministic_by_seed():
    a = arithmetic_problems(20, steps=4, digits=2, seed=7)
    b = arithmetic_problems(20, steps=4, digits=2, seed=7)
    c = arithmetic_problems(20, steps=4, digits=2, seed=8)
    assert a == b
    assert [p.question for p in a] != [p.question for p in c]
    # prefix-stable: problem i does not depend on n
    assert arithmetic_problems(5, steps=4, digits=2, seed=7) == a[:5]
    assert len({p.id for p in a}) == len(a)


@pytest.mark.parametrize("steps", range(1, MAX_STEPS + 1))
@pytest.mark.parametrize("digits", [1, 2])
def test_steps_compute_the_answer(steps, digits):
    probs = arithmetic_problems(60, steps=steps, digits=digits, seed=steps * 10 + digits)
    assert len(probs) == 60
    for p in probs:
        assert len(p.steps) == steps == p.meta["num_steps"]
        assert p.meta["digits"] == digits
        _check_chain(p)
        assert p.question.endswith("?")
        # moderately sized values
        assert p.answer <= (200 if digits == 1 else 5000)
    # some variety in operations and templates
    ops = {op for p in probs for op in p.meta["ops"]}
    assert {"add", "sub"} <= ops
    if steps >= 3:
        assert len(ops) >= 3
    assert len({p.meta["template"] for p in probs}) >= 4


def test_operand_sizes():
    for p in arithmetic_problems(50, steps=3, digits=1, seed=1):
        for line in p.steps:
            m = STEP_RE.match(line)
            assert int(m[3]) <= 9
    two = arithmetic_problems(50, steps=3, digits=2, seed=1)
    addsub = [int(STEP_RE.match(s)[3]) for p in two for s in p.steps if STEP_RE.match(s)[2] in "+-"]
    assert addsub and all(10 <= b <= 99 for b in addsub)


def test_difficulty_levels_and_load_task():
    levels = difficulty_levels()
    assert {"easy", "medium", "hard"} <= set(levels)
    assert levels["easy"] == {**levels["easy"], "steps": 2, "digits": 1}
    assert levels["medium"]["steps"] == (3, 4) and levels["medium"]["digits"] == 2
    assert levels["hard"]["steps"] == (5, 6)
    levels["easy"]["steps"] = 99  # returned dicts are copies
    assert difficulty_levels()["easy"]["steps"] == 2

    for name, (lo, hi) in {"arith-easy": (2, 2), "arith-medium": (3, 4), "arith-hard": (5, 6)}.items():
        probs = load_task(name, n=40, seed=3)
        assert len(probs) == 40
        assert {len(p.steps) for p in probs} <= set(range(lo, hi + 1))
        for p in probs:
            _check_chain(p)
            assert p.meta["level"] == name.split("-")[1]
        assert load_task(name, n=40, seed=3) == probs
    assert {len(p.steps) for p in load_task("arith-medium", n=60)} == {3, 4}
    assert len(load_task("arith-easy")) == 100
    assert set(list_tasks()) >= {"arith-easy", "arith-medium", "arith-hard", "gsm8k-sample"}


def test_generator_argument_errors():
    with pytest.raises(ValueError, match="steps must be in 1..8"):
        arithmetic_problems(1, steps=0)
    with pytest.raises(ValueError, match="steps must be in 1..8"):
        arithmetic_problems(1, steps=9)
    with pytest.raises(ValueError, match="digits must be 1, 2 or 3"):
        arithmetic_problems(1, digits=5)
    with pytest.raises(ValueError, match="unknown difficulty level 'impossible'"):
        arithmetic_problems(1, level="impossible")
    with pytest.raises(ValueError, match="unknown task 'arith-nope'"):
        load_task("arith-nope")
    assert arithmetic_problems(0) == []


def test_cot_text_and_format_target():
    p = Problem(id="x", question="q?", answer=19, steps=["12 + 7 = 19"])
    assert cot_text(p) == "12 + 7 = 19"
    assert format_target(p) == "12 + 7 = 19\n#### 19"
    assert format_target(p, style="answer") == "#### 19"
    assert format_target(Problem("y", "q", 12.0, ["a", "b"])) == "a\nb\n#### 12"
    with pytest.raises(ValueError, match="unknown style"):
        format_target(p, style="json")
    for p in arithmetic_problems(30, steps=5, digits=2, seed=2):
        target = format_target(p)
        assert target.splitlines()[:-1] == p.steps
        assert extract_answer(target) == p.answer


# ----------------------------------------------------------------------------- GSM8K


def test_gsm8k_sample_ships_and_parses():
    path = gsm8k_sample_path()
    assert path.is_file()
    assert (path.parent / "LICENSE").is_file()
    probs = gsm8k_sample()
    assert len(probs) == 200
    assert len({p.id for p in probs}) == 200
    first = probs[0]
    assert first.question.startswith("Janet")
    assert first.answer == 18
    assert first.steps == [
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.",
        "She makes 9 * 2 = $18 every day at the farmer\u2019s market.",
    ]
    assert all("<<" not in s and ">>" not in s for p in probs for s in p.steps)
    assert all(p.steps for p in probs)
    assert len(gsm8k_sample(limit=10)) == 10
    assert gsm8k_sample(limit=10) == probs[:10]


def test_reference_answers_extract_to_parsed_answers():
    lines = gsm8k_sample_path().read_text(encoding="utf-8").splitlines()
    probs = gsm8k_sample()
    assert len(lines) == len(probs)
    for line, p in zip(lines, probs):
        raw = json.loads(line)["answer"]
        assert p.meta["raw_answer"] == raw
        assert extract_answer(raw) == p.answer, p.id
        assert is_correct(raw, p.answer)
        assert extract_answer(format_target(p)) == p.answer
    # the sample contains thousands separators and negative answers; they parse
    answers = {p.answer for p in probs}
    assert all(isinstance(a, int) for a in answers)


def test_gsm8k_seeded_subset_and_load_task(tmp_path):
    full = gsm8k_sample()
    sub = load_task("gsm8k-sample", n=25, seed=1)
    assert len(sub) == 25
    assert sub == load_task("gsm8k-sample", n=25, seed=1)
    assert sub != full[:25]
    assert {p.id for p in sub} <= {p.id for p in full}
    assert load_task("gsm8k-sample", n=5) == full[:5]
    assert load_task(str(gsm8k_sample_path()), n=3) == full[:3]
    assert load_task(gsm8k_sample_path(), n=3) == full[:3]
    with pytest.raises(FileNotFoundError):
        load_task(str(tmp_path / "missing.jsonl"))


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_gsm8k_loader_formats(tmp_path):
    rows = [
        {"question": "Q1?", "answer": "Half of 48 is 48/2=<<48/2=24>>24.\n#### 24"},
        {"question": "Q2?", "answer": "Lots of money.\n#### $1,250"},
        {"question": "Q3?", "answer": "Below zero.\n#### -3"},
        {"question": "Q4?", "answer": "A decimal.\n#### 2.5"},
        {"question": "Q5?", "answer": "Whole float.\n####  12.0 "},
    ]
    path = _write(tmp_path / "mini.jsonl", [json.dumps(r) for r in rows] + [""])
    probs = load_gsm8k(path)
    assert [p.answer for p in probs] == [24, 1250, -3, 2.5, 12]
    assert isinstance(probs[4].answer, int)
    assert probs[0].steps == ["Half of 48 is 48/2=24."]
    assert probs[0].meta["line"] == 1 and probs[0].meta["file"] == "mini.jsonl"
    assert probs[0].id == "gsm8k-mini-00000"


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": "Q?", "answer": "no final line 7"}', r"bad\.jsonl:2: answer has no '#### <number>'"),
        ('{"question": "Q?", "answer": "x\\n#### lots"}', r"bad\.jsonl:2: cannot parse a number after '####'"),
        ('{"question": "Q?"}', r"bad\.jsonl:2: missing field 'answer'"),
        ('{"answer": "#### 3"}', r"bad\.jsonl:2: missing field 'question'"),
        ('{"question": "Q?", "answer": 3}', r"bad\.jsonl:2: field 'answer' must be a non-empty string"),
        ('{"question": "Q?", "answer": "#### 3"', r"bad\.jsonl:2: malformed JSON"),
        ("[1, 2]", r"bad\.jsonl:2: expected a JSON object"),
    ],
)
def test_gsm8k_loader_errors(tmp_path, line, message):
    good = json.dumps({"question": "Q?", "answer": "1 + 1 = 2\n#### 2"})
    path = _write(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(TaskFormatError, match=message):
        load_gsm8k(path)


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So she makes 18 dollars.\n#### 18", 18),
        ("#### 1,234", 1234),
        ("blah 5 blah\n####72", 72),
        ("The final answer is $\\boxed{42}$.", 42),
        ("\\boxed{1{,}234}", 1234),
        ("\\boxed{\\$18}", 18),
        ("\\boxed{18 \\text{ dollars}}", 18),
        ("\\boxed{\\frac{3}{4}}", 0.75),
        ("The answer is 17.", 17),
        ("answer is: -4", -4),
        ("Answer: $5", 5),
        ("Answer: **72**", 72),
        ("She has 3 apples, then 5, and the final answer is 9 apples.", 9),
        ("First 3, then 12 apples remain.", 12),
        ("It costs $1,234.50 in total.", 1234.5),
        ("The result is 12.0", 12),
        ("The result is 12.", 12),
        ("Temperature fell to -7 degrees", -7),
        ("Temperature fell to \u22127 degrees", -7),
        ("She owes -$5", -5),
        ("10 - 5 = 5", 5),
        ("pages 3-5", 5),
        ("values 1,2,3", 3),
        ("<think>maybe 3, maybe the answer is 4</think>The answer is 5", 5),
        ("<think>I think it is 30</think>\n\n#### 31", 31),
        ("<think>the answer is 9</think>", 9),
        ("<think>step 1</think> no digits after", 1),
        ("#### 8 and later Answer: 3", 8),
        ("\\boxed{6} but answer is 7", 6),
        ("no numbers here", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    got = extract_answer(text)
    if expected is None:
        assert got is None
    else:
        assert got == expected
        assert type(got) is type(expected)


def test_parse_number():
    assert parse_number("1,234") == 1234
    assert parse_number("$5") == 5
    assert parse_number(" -3. ") == -3
    assert parse_number("12.0") == 12 and isinstance(parse_number("12.0"), int)
    assert parse_number("0.5") == 0.5
    assert parse_number("abc") is None
    assert parse_number("") is None


def test_is_correct():
    assert is_correct(12, 12)
    assert is_correct(12.0, 12)
    assert is_correct(12.0000001, 12)
    assert not is_correct(12.1, 12)
    assert not is_correct(None, 12)
    assert is_correct("so the total is $1,200.", 1200)
    assert is_correct("#### 7", "7")
    assert not is_correct("no idea", 7)
    assert is_correct(0.1 + 0.2, 0.3)
    assert not is_correct(True, 1)
    assert is_correct(extract_answer("<think>6</think> Answer: 7"), 7)
