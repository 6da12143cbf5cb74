"""Contrastive extraction and the layer sweep on both architectures, the CLI, bad input.

The reference activations come from an independent reader: plain transformers forwards,
one prompt at a time (no padding, no nnsight), with forward hooks on the decoder blocks.
"""

from __future__ import annotations

import json

import pytest
import torch

import probes
import workbench as wb
from workbench.arch import decoder_layers
from workbench.cli import main as cli
from workbench.generate import base_model
from workbench.steering import (
    LayerSweep,
    SteeringVector,
    extract,
    logistic,
    mean_diff,
    pairs_from_lists,
    pca,
    resolve_pairs,
    sweep,
)
from workbench.steering.apply import load_vector

PAIRS = [
    ("I love this sunny day, it is wonderful.", "I hate this rainy day, it is awful."),
    ("What a great result!", "What a terrible result!"),
    ("She was delighted with the gift.", "She was disappointed with the gift."),
    ("The food was tasty and fresh.", "The food was bland and stale."),
    ("Our trip was a joy.", "Our trip was a disaster."),
    ("He smiled warmly at everyone in the room.", "He scowled coldly."),
]


@torch.no_grad()
def reference_acts(bench, prompts, layers):
    """{layer: list of [T_i, d]} block outputs, one prompt per forward, via forward hooks."""
    blocks = decoder_layers(bench.hf)
    out = {l: [] for l in layers}
    cur: dict[int, torch.Tensor] = {}
    hooks = [
        blocks[l].register_forward_hook(
            lambda m, a, o, l=l: cur.__setitem__(l, (o[0] if isinstance(o, tuple) else o)[0].detach().float().clone())
        )
        for l in layers
    ]
    try:
        for p in prompts:
            ids = bench.tokenizer(p, return_tensors="pt")["input_ids"]
            base_model(bench.hf)(input_ids=ids)  # hooks fire; skips the big unembedding
            for l in layers:
                out[l].append(cur[l])
    finally:
        for h in hooks:
            h.remove()
    return out


def _ref_direction(bench, layers, reduce, acts=None):
    pos, neg = acts or _ref_acts(bench, layers)
    return {l: torch.stack([reduce(a) - reduce(b) for a, b in zip(pos[l], neg[l])]).mean(0) for l in layers}


def _ref_acts(bench, layers):
    return reference_acts(bench, [p for p, _ in PAIRS], layers), reference_acts(bench, [n for _, n in PAIRS], layers)


# --------------------------------------------------------------------------- mean difference


def test_mean_diff_is_the_plain_mean_of_pair_differences(any_bench):
    b = any_bench
    layers = [0, b.arch.n_layers // 2, b.arch.n_layers - 1]
    vec = extract(b, PAIRS, layers=layers, method=mean_diff())
    assert vec.layers == layers and vec.method == "mean_diff" and vec.position == "-1"
    assert vec.d_model == b.arch.d_model and vec.model_family == b.arch.family and vec.n_layers == b.arch.n_layers
    # exactly the plain mean over a separate capture of the same prompts
    acts = wb.capture(b, [p for p, _ in PAIRS] + [n for _, n in PAIRS], layers=layers, positions=-1)
    n = len(PAIRS)
    for l in layers:
        assert torch.equal(vec.directions[l], (acts[l][:n] - acts[l][n:]).mean(0))
    # and, up to float rounding, the independent one-prompt-at-a-time reference
    ref = _ref_direction(b, layers, lambda a: a[-1])
    for l in layers:
        torch.testing.assert_close(vec.directions[l], ref[l], atol=2e-4, rtol=1e-4)


def test_positions_slice_and_mean(qwen_tiny):
    b = qwen_tiny
    layers = [1, 5]
    acts = _ref_acts(b, layers)
    cases = ((slice(0, 2), "0:2", lambda a: a[0:2].mean(0)), ("mean", "mean", lambda a: a.mean(0)), (1, "1", lambda a: a[1]))
    for position, label, reduce in cases:
        vec = extract(b, PAIRS, layers=layers, position=position)
        assert vec.position == label
        ref = _ref_direction(b, layers, reduce, acts)
        for l in layers:
            torch.testing.assert_close(vec.directions[l], ref[l], atol=1e-5, rtol=1e-5)


def test_methods_and_normalisation(qwen_tiny):
    b = qwen_tiny
    raw = extract(b, PAIRS, layers=[3])
    unit = extract(b, PAIRS, layers=[3], method=mean_diff(normalize=True))
    torch.testing.assert_close(unit.directions[3], raw.directions[3] / raw.directions[3].norm())
    assert unit.metadata["normalize"] is True
    acts = wb.capture(b, [p for p, _ in PAIRS] + [n for _, n in PAIRS], layers=[3], positions=-1)
    diffs = acts[3][: len(PAIRS)] - acts[3][len(PAIRS):]
    for m in (pca(), "logistic"):
        v = extract(b, PAIRS, layers=[3], method=m).directions[3]
        assert v.shape == (b.arch.d_model,) and torch.isfinite(v).all()
        assert float((diffs @ v).mean()) > 0  # positives project higher
        torch.testing.assert_close(v.norm(), raw.directions[3].norm(), atol=1e-4, rtol=1e-4)


def test_probe_set_input_and_vector_round_trip(qwen_tiny, tmp_path):
    b = qwen_tiny
    ps = probes.load_set("sentiment")
    small = probes.ProbeSet(name="sentiment", version=1, pairs=ps.train()[:5] + ps.test()[:3])
    pl = resolve_pairs(small)
    assert len(pl) == 8 and pl.test_index == [5, 6, 7] and pl.probe_set == "sentiment.v1"
    vec = extract(b, small, layers=[2, 6], scale=2.5)
    assert vec.scale == 2.5 and vec.metadata["probe_set"] == "sentiment.v1" and vec.metadata["n_pairs"] == 8
    path = tmp_path / "v.safetensors"
    vec.save(path)
    back = load_vector(path, b)
    assert back.scale == 2.5 and all(torch.equal(back.directions[l], vec.directions[l]) for l in vec.layers)


# --------------------------------------------------------------------------- sweep


def test_sweep_uses_the_train_split_and_picks_the_best_layer(qwen_tiny):
    b = qwen_tiny
    ps = probes.load_set("sentiment")
    small = probes.ProbeSet(name="sentiment", version=1, pairs=ps.train()[:8] + ps.test()[:4])
    sw = sweep(b, small)
    assert isinstance(sw, LayerSweep)
    assert sw.test_index == [8, 9, 10, 11] and sw.train_index == list(range(8))
    assert [q.layer for q in sw.result.layers] == list(range(b.arch.n_layers))
    assert sw.best_layer == max(sw.result.layers, key=lambda q: (q.probe_accuracy, q.gap, q.consistency, -q.layer)).layer
    # directions are fit on train pairs only: exactly the mean difference of those rows
    pl = resolve_pairs(small)
    acts = wb.capture(b, pl.positives + pl.negatives, positions=-1)
    n = len(pl)
    for l in (0, 5):
        d = acts[l][:n] - acts[l][n:]
        assert torch.equal(sw.vector.directions[l], d[:8].mean(0))
    for q in sw.result.layers:
        assert 0 <= q.probe_accuracy <= 1 and q.magnitude > 0
    best = sw.best_vector()
    assert best.layers == [sw.best_layer] and best.metadata["split"] == "train"
    # plain pair lists get a seeded split
    sw2 = sweep(b, PAIRS, layers=[1, 2], test_fraction=0.34, seed=1)
    assert len(sw2.test_index) == 2 and sorted(sw2.train_index + sw2.test_index) == list(range(len(PAIRS)))
    fig = sw.figure()
    stars = [t for t in fig.data if t.marker is not None and t.marker.symbol == "star"]
    assert len(stars) == 4 and all(list(t.x) == [sw.best_layer] for t in stars)


@pytest.mark.slow
def test_sweep_on_the_default_model_finds_sentiment(smol):
    sw = sweep(smol, "sentiment")
    best = sw.best
    assert best.probe_accuracy >= 0.95 and best.gap > 3
    assert 8 <= sw.best_layer <= 25


# --------------------------------------------------------------------------- bad input


def test_bad_pair_lists_and_layers(qwen_tiny):
    b = qwen_tiny
    with pytest.raises(ValueError, match="empty"):
        extract(b, [], layers=[1])
    with pytest.raises(ValueError, match="unbalanced"):
        extract(b, [("a", "b"), ("c",)], layers=[1])
    with pytest.raises(ValueError, match="unbalanced"):
        pairs_from_lists(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="unbalanced"):
        extract(b, [("a", "b", "c"), ("d", "e")], layers=[1])
    with pytest.raises(ValueError, match="non-empty string"):
        extract(b, [("a", ""), ("c", "d")], layers=[1])
    with pytest.raises(ValueError, match="tuple"):
        extract(b, ["just a string", "another"], layers=[1])
    with pytest.raises(ValueError, match="at least 2"):
        extract(b, [("a", "b")], layers=[1])
    with pytest.raises(ValueError, match=r"0\.\.7|valid"):
        extract(b, PAIRS, layers=[99])
    with pytest.raises(ValueError, match="layers is empty"):
        extract(b, PAIRS, layers=[])
    with pytest.raises(ValueError, match="unknown method"):
        extract(b, PAIRS, layers=[1], method="median")
    with pytest.raises(ValueError, match="position"):
        extract(b, PAIRS, layers=[1], position="first")
    with pytest.raises(ValueError, match="outside"):
        extract(b, PAIRS, layers=[1], position=50)
    with pytest.raises(ValueError, match="split"):
        resolve_pairs(PAIRS, split="train")
    with pytest.raises(probes.UnknownProbeSetError):
        extract(b, "no_such_set", layers=[1])


# --------------------------------------------------------------------------- CLI


def _pairs_file(tmp_path):
    path = tmp_path / "mini.v1.jsonl"
    rows = [{"id": f"m-{i}", "positive": p, "negative": n, "split": "test" if i % 3 == 0 else "train"}
            for i, (p, n) in enumerate(PAIRS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_extract_export_generate_and_sweep(qwen_tiny, tmp_path, capsys):
    pairs = _pairs_file(tmp_path)
    out = tmp_path / "v.safetensors"
    m = ["--model", "qwen3.5-tiny", "--device", "cpu"]
    assert cli(["steer", "extract", *m, "--pairs", str(pairs), "--layer", "2", "--layer", "5", "--out", str(out)]) == 0
    vec = SteeringVector.load(out)
    assert vec.layers == [2, 5] and vec.metadata["probe_set"] == "mini.v1"
    ref = extract(qwen_tiny, PAIRS, layers=[2, 5])
    assert all(torch.equal(vec.directions[l], ref.directions[l]) for l in (2, 5))

    gg = tmp_path / "v.gguf"
    assert cli(["steer", "export", str(out), "--out", str(gg)]) == 0
    assert gg.read_bytes()[:4] == b"GGUF"
    back = SteeringVector.from_gguf(gg, expect_d_model=qwen_tiny.arch.d_model, expect_family=qwen_tiny.arch.family)
    assert all(torch.equal(back.directions[l], vec.directions[l]) for l in (2, 5))
    st2 = tmp_path / "back.safetensors"
    assert cli(["steer", "export", str(gg), "--out", str(st2), "--layer", "5"]) == 0
    assert SteeringVector.load(st2).layers == [5]

    capsys.readouterr()
    assert cli(["steer", "generate", *m, "Hello", "--vector", str(gg), "--scale", "4", "--max-new-tokens", "3",
                "--raw", "--compare"]) == 0
    text = capsys.readouterr().out
    assert "KL(unsteered || steered)" in text and "--- steered ---" in text
    # the same side-by-side as the web app: the core's compare_stream, its last texts printed
    from workbench.steering import compare_stream

    plain, steered = list(compare_stream(qwen_tiny, "Hello", [back.steer(4.0)], max_new_tokens=3, chat=False))[-1]
    assert f"--- unsteered ---\n{plain}\n--- steered ---\n{steered}\n" in text

    html = tmp_path / "sweep.html"
    best = tmp_path / "best.safetensors"
    assert cli(["steer", "sweep", *m, "--pairs", str(pairs), "--json", "--plot", str(html),
                "--save-best", str(best)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows["rows"]) == qwen_tiny.arch.n_layers and rows["n_test"] == 2
    assert html.stat().st_size > 0 and SteeringVector.load(best).layers == [rows["best_layer"]]


def test_cli_bad_input_writes_nothing(qwen_tiny, smol, tmp_path, capsys):
    pairs = _pairs_file(tmp_path)
    m = ["--model", "qwen3.5-tiny", "--device", "cpu"]
    out = tmp_path / "v.safetensors"
    assert cli(["steer", "extract", *m, "--pairs", str(pairs), "--layer", "99", "--out", str(out)]) == 2
    assert "valid" in capsys.readouterr().err and not out.exists()
    assert cli(["steer", "extract", *m, "--pairs", str(pairs), "--position", "x:y", "--out", str(out)]) == 2
    assert cli(["steer", "extract", *m, "--pairs", str(pairs), "--out", str(tmp_path / "v.pt")]) == 2
    bad = tmp_path / "bad.v1.jsonl"
    bad.write_text(json.dumps({"id": "a", "positive": "x"}) + "\n")
    assert cli(["steer", "extract", *m, "--pairs", str(bad), "--out", str(out)]) == 2
    assert not out.exists()
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    gg = tmp_path / "o.gguf"
    assert cli(["steer", "export", str(junk), "--out", str(gg)]) == 2
    assert "not a steering vector" in capsys.readouterr().err and not gg.exists()
    # a vector made for another model is refused by generate
    other = SteeringVector(directions={1: torch.ones(smol.arch.d_model)}, method="t", model_name=smol.name,
                           model_family=smol.arch.family, d_model=smol.arch.d_model)
    op = tmp_path / "other.safetensors"
    other.save(op)
    assert cli(["steer", "generate", *m, "Hi", "--vector", str(op), "--max-new-tokens", "2"]) == 2
    assert "d_model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mini.v1.jsonl", "bad.v1.jsonl", "junk.safetensors", "other.safetensors"])
