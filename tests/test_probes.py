"""Contract tests for the probe-set registry (``probes/``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import probes
from probes import ProbeSetError, UnknownProbeSetError, load_set, list_sets

SHIPPED = ("sentiment", "formality", "english_french", "attentive")


@pytest.fixture(autouse=True)
def _isolate_registry(monkeypatch):
    """Keep register_dir / WORKBENCH_PROBES changes local to each test."""
    monkeypatch.setattr(probes, "_registered", [])
    monkeypatch.delenv(probes.ENV_VAR, raising=False)


def _write(path: Path, lines: list) -> Path:
    path.write_text(
        "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines),
        encoding="utf-8",
    )
    return path


def _pairs(prefix: str, n: int) -> list[dict]:
    return [
        {
            "id": f"{prefix}-{i:04d}",
            "positive": f"a happy sentence number {i}",
            "negative": f"a sad sentence number {i}",
            "split": "test" if i % 4 == 0 else "train",
            "topic": "t",
        }
        for i in range(1, n + 1)
    ]


# ----------------------------------------------------------------------------- contract


def test_shipped_sets_are_registered():
    names = list_sets()
    for name in SHIPPED:
        assert name in names


@pytest.mark.parametrize("name", list_sets())
def test_probe_set_contract(name):
    ps = load_set(name)
    assert ps.name == name
    assert isinstance(ps.version, int) and ps.version >= 1
    assert ps.has_meta, f"{name}: the first line should be a _meta header"
    assert ps.description.strip()
    assert ps.positive_label.strip() and ps.negative_label.strip()
    assert ps.positive_label != ps.negative_label
    assert ps.concept_words and all(isinstance(w, str) and w.strip() for w in ps.concept_words)
    assert ps.neutral_prompts and all(isinstance(p, str) and p.strip() for p in ps.neutral_prompts)

    ids = [p.id for p in ps.pairs]
    assert len(ids) == len(set(ids)), "pair ids must be unique"
    assert len(ps.pairs) >= 48
    for p in ps.pairs:
        assert isinstance(p.positive, str) and p.positive.strip(), p.id
        assert isinstance(p.negative, str) and p.negative.strip(), p.id
        assert p.positive != p.negative, p.id
        assert p.split in ("train", "test"), p.id
    train, test = ps.train(), ps.test()
    assert train and test
    assert len(train) + len(test) == len(ps.pairs)
    assert len(train) > len(test)

    tuples = ps.as_tuples()
    assert len(tuples) == len(ps.pairs)
    assert all(isinstance(t, tuple) and len(t) == 2 for t in tuples)
    assert ps.as_tuples("train") == [(p.positive, p.negative) for p in train]
    assert ps.as_tuples("test") == [(p.positive, p.negative) for p in test]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_sets_are_rich(name):
    ps = load_set(name)
    assert len(ps.pairs) >= 64
    assert 8 <= len(ps.concept_words) <= 24
    assert len(ps.neutral_prompts) >= 12
    assert all(p.topic for p in ps.pairs)
    assert all(p.id.startswith(f"{name}-") for p in ps.pairs)
    # roughly 75 / 25
    frac_test = len(ps.test()) / len(ps.pairs)
    assert 0.15 <= frac_test <= 0.35
    # the two sides of a pair have similar length
    for p in ps.pairs:
        ratio = len(p.positive) / len(p.negative)
        assert 0.5 <= ratio <= 2.0, p.id


def test_probes_do_not_import_workbench():
    code = "import sys, probes; probes.list_sets(); print('workbench' in sys.modules)"
    root = Path(probes.__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    src = Path(probes.__file__).read_text(encoding="utf-8")
    assert "import workbench" not in src and "from workbench" not in src


def test_latest_version_and_explicit_version(tmp_path):
    head = {"_meta": {"name": "sentiment", "version": 2, "description": "v2", "concept_words": [" good"]}}
    _write(tmp_path / "sentiment.v2.jsonl", [head] + _pairs("sentiment", 8))
    probes.register_dir(tmp_path)
    assert probes.list_versions("sentiment") == [1, 2]
    assert load_set("sentiment").version == 2
    v1 = load_set("sentiment", version=1)
    assert v1.version == 1 and len(v1.pairs) >= 64
    with pytest.raises(UnknownProbeSetError, match="no version 7"):
        load_set("sentiment", version=7)


# ----------------------------------------------------------------------------- user files


def test_user_dropped_file_registers(tmp_path):
    head = {
        "_meta": {
            "name": "honesty",
            "version": 1,
            "description": "honest vs deceptive",
            "positive_label": "honest",
            "negative_label": "deceptive",
            "concept_words": [" honest", " truth"],
            "neutral_prompts": ["Tell me about your day."],
        }
    }
    _write(tmp_path / "honesty.v1.jsonl", [head] + _pairs("honesty", 12))
    (tmp_path / "notes.txt").write_text("ignored", encoding="utf-8")
    (tmp_path / "README.jsonl").write_text("not a probe set name", encoding="utf-8")

    assert "honesty" not in list_sets()
    probes.register_dir(tmp_path)
    assert "honesty" in list_sets()
    ps = load_set("honesty")
    assert ps.version == 1 and ps.positive_label == "honest"
    assert len(ps.pairs) == 12 and len(ps.test()) == 3
    assert ps.path == tmp_path / "honesty.v1.jsonl"

    # a second file dropped later shows up without re-registering
    _write(tmp_path / "honesty.v3.jsonl", [dict(head, _meta=dict(head["_meta"], version=3))] + _pairs("h", 5))
    assert load_set("honesty").version == 3

    probes.unregister_dir(tmp_path)
    assert "honesty" not in list_sets()


def test_env_var_dirs(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _write(a / "alpha.v1.jsonl", _pairs("alpha", 4))
    _write(b / "beta.v1.jsonl", _pairs("beta", 4))
    monkeypatch.setenv(probes.ENV_VAR, f"{a}{os.pathsep}{b}")
    names = list_sets()
    assert "alpha" in names and "beta" in names
    # no header: defaults fill in
    ps = load_set("beta")
    assert not ps.has_meta and ps.version == 1 and ps.positive_label == "positive"


def test_user_dir_shadows_shipped_set(tmp_path):
    _write(tmp_path / "formality.v1.jsonl", _pairs("mine", 6))
    probes.register_dir(tmp_path)
    assert len(load_set("formality").pairs) == 6


def test_load_by_path_and_missing_split(tmp_path):
    rows = [{"id": f"x{i}", "positive": f"p{i}", "negative": f"n{i}"} for i in range(40)]
    path = _write(tmp_path / "my_concept.jsonl", rows)
    ps = load_set(str(path))
    assert ps.name == "my_concept" and ps.version == 1
    assert {p.split for p in ps.pairs} == {"train", "test"}
    # deterministic automatic split
    assert [p.split for p in load_set(path).pairs] == [p.split for p in ps.pairs]
    with pytest.raises(FileNotFoundError):
        load_set(str(tmp_path / "nope.jsonl"))


def test_register_dir_requires_a_directory(tmp_path):
    with pytest.raises(NotADirectoryError):
        probes.register_dir(tmp_path / "missing")


# ----------------------------------------------------------------------------- errors


def test_unknown_set_lists_available():
    with pytest.raises(UnknownProbeSetError) as ei:
        load_set("no_such_concept")
    msg = str(ei.value)
    assert "no_such_concept" in msg
    for name in SHIPPED:
        assert name in msg
    assert isinstance(ei.value, LookupError) and isinstance(ei.value, ValueError)


def test_malformed_json_reports_file_and_line(tmp_path):
    lines = [json.dumps(r) for r in _pairs("bad", 3)] + ['{"id": "bad-9", "positive": "x", ']
    path = tmp_path / "bad.v1.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ProbeSetError, match=r"bad\.v1\.jsonl:4: malformed JSON"):
        load_set(path)


def test_missing_fields(tmp_path):
    rows = _pairs("m", 2) + [{"id": "m-3", "positive": "only one side"}]
    path = _write(tmp_path / "m.v1.jsonl", rows)
    with pytest.raises(ProbeSetError, match=r"m\.v1\.jsonl:3: missing field\(s\) \['negative'\]"):
        load_set(path)


def test_empty_side_and_identical_sides(tmp_path):
    rows = _pairs("e", 1) + [{"id": "e-2", "positive": "  ", "negative": "x"}]
    with pytest.raises(ProbeSetError, match=r":2: field 'positive' must be a non-empty string"):
        load_set(_write(tmp_path / "e.v1.jsonl", rows))
    rows = _pairs("s", 1) + [{"id": "s-2", "positive": "same", "negative": "same"}]
    with pytest.raises(ProbeSetError, match="identical"):
        load_set(_write(tmp_path / "s.v1.jsonl", rows))


def test_duplicate_ids(tmp_path):
    rows = _pairs("d", 3)
    rows.append(dict(rows[1]))
    with pytest.raises(ProbeSetError, match=r"d\.v1\.jsonl:4: duplicate id 'd-0002' \(first seen on line 2\)"):
        load_set(_write(tmp_path / "d.v1.jsonl", rows))


def test_bad_split_and_bad_meta(tmp_path):
    rows = _pairs("b", 2)
    rows[1]["split"] = "validation"
    with pytest.raises(ProbeSetError, match=r":2: split must be one of"):
        load_set(_write(tmp_path / "b.v1.jsonl", rows))

    head = {"_meta": {"name": "c", "version": 2}}
    with pytest.raises(ProbeSetError, match="does not match the file name"):
        load_set(_write(tmp_path / "c.v1.jsonl", [head] + _pairs("c", 2)))

    head = {"_meta": {"name": "late"}}
    with pytest.raises(ProbeSetError, match=r":3: the _meta header must be the first line"):
        load_set(_write(tmp_path / "late.v1.jsonl", _pairs("late", 2) + [head]))

    head = {"_meta": {"name": "w", "concept_words": " good"}}
    with pytest.raises(ProbeSetError, match="concept_words must be a list of strings"):
        load_set(_write(tmp_path / "w.v1.jsonl", [head] + _pairs("w", 2)))

    with pytest.raises(ProbeSetError, match="no pairs"):
        load_set(_write(tmp_path / "empty.v1.jsonl", [{"_meta": {"name": "empty"}}]))

    with pytest.raises(ProbeSetError, match=r":1: expected a JSON object"):
        load_set(_write(tmp_path / "arr.v1.jsonl", ["[1, 2]"]))


def test_registered_set_errors_carry_path(tmp_path):
    path = tmp_path / "broken.v1.jsonl"
    path.write_text('{"id": "x", "positive": "a", "negative": "b"}\nnot json\n', encoding="utf-8")
    probes.register_dir(tmp_path)
    assert "broken" in list_sets()
    with pytest.raises(ProbeSetError) as ei:
        load_set("broken")
    assert str(path) in str(ei.value) and ":2:" in str(ei.value)
