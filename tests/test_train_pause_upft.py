"""Pause tokens as published (Goyal et al. 2023: prompt + pauses + answer, no chain) and UPFT
(Ji et al. 2025: the model fine-tuned on the first tokens of its own sampled answers), on a
smoke-size micro model: the loss masks by hand, what the engine feeds at inference, the
samples the trainer sees, and exact resume after an interruption."""

from __future__ import annotations

import json
import threading

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench import latent
from workbench.train import arith
from workbench.train import latent_recipes as lr
from workbench.train.latent_recipes import (
    LatentModel,
    PauseAnswerConfig,
    PauseConfig,
    UpftConfig,
    pause_answer_loss,
    run_pause_answer,
    run_upft,
    upft_loss,
    upft_samples,
)

TINY = dict(n_train=8, eval_n=0, steps=2, batch_size=4, progress=False, device="cpu")
CLOSE = 248069  # </think>


@pytest.fixture(scope="module")
def micro(micro_dir):
    return wb.load(str(micro_dir), device="cpu")


def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model" / "model.safetensors"))


# --------------------------------------------------------------------------- Goyal et al.: pauses, then the answer


def test_pause_answer_loss_is_the_answer_tokens_only(micro):
    """Hand check on a batch of 3 (prompts of different lengths): the loss is the
    cross-entropy of exactly the answer tokens after `prompt + K pauses + </think>`; the
    prompt, the K pause positions and `</think>` carry none, and no chain is in the input."""
    probs = arith.eval_problems("2 steps", 2) + arith.eval_problems("4 steps", 1)
    batch = arith.encode_problems(micro.tokenizer, probs)
    assert len({len(e.prompt) for e in batch}) > 1
    K, d = 3, micro.arch.d_model
    torch.manual_seed(1)
    model = LatentModel(micro.hf, pause=torch.randn(1, d) * 0.1)
    with torch.no_grad():
        got = pause_answer_loss(arith.VocabView(micro.hf), model, batch, K, CLOSE)
        emb = micro.hf.get_input_embeddings()
        logits, targets = [], []
        for e, p in zip(batch, probs):
            assert e.suffix[0] == CLOSE and micro.tokenizer.decode(e.suffix[1:]) == f"\n\n#### {p.answer}<|im_end|>"
            ids = torch.tensor(e.prompt + e.suffix)
            x = torch.cat([emb(torch.tensor(e.prompt)), model.pause.expand(K, -1), emb(torch.tensor(e.suffix))])
            out = micro.hf(inputs_embeds=x[None]).logits[0]
            L = len(e.prompt) + K  # position of </think>; answer token j (>= 1) is predicted at L + j - 1
            logits.append(out[L : L + len(e.suffix) - 1])
            targets.append(ids[len(e.prompt) + 1 :])
        want = F.cross_entropy(torch.cat(logits), torch.cat(targets))
    assert got.tokens == sum(len(e.suffix) - 1 for e in batch)
    torch.testing.assert_close(got.loss, want, rtol=1e-4, atol=1e-4)
    assert lr.answer_weights(batch[:1], CLOSE) == [[0] + [1] * (len(batch[0].suffix) - 1)]
    assert lr.answer_weights(batch[:1], None) == [[1] * len(batch[0].suffix)]  # a model without </think>: all of it is the answer


def test_pause_answer_recipe_evaluates_prompt_pauses_answer(micro_dir, micro, tmp_path):
    res = run_pause_answer(PauseAnswerConfig(model=str(micro_dir), out_dir=str(tmp_path / "g"), n_pause=3, **TINY))
    assert res["status"] == "done"
    policy = json.loads((tmp_path / "g" / "final" / "latent_policy.json").read_text())
    assert policy["method"] == "pause" and policy["end"] == "</think>" and policy["steps"] == 3
    spec, model = latent.load_policy(res["final"])
    assert isinstance(spec, latent.PauseTokens) and spec.end == "</think>" and spec.count == 3
    P = spec.tensors["pause_embeds"]
    assert torch.equal(P[0], P[1]) and torch.equal(P[0], P[2])  # one <pause> token repeated, as in the paper
    bench = wb.load(model, device="cpu")
    e = arith.encode_problems(bench.tokenizer, arith.eval_problems("3 steps", 1))[0]
    tr = latent.run(bench, [e.prompt], spec, max_new_tokens=3, readout=False)[0]
    # fed: the 3 pauses, the forced </think>, then the model's own answer tokens; no chain
    assert tr.fed[:4] == [("latent", 0), ("latent", 1), ("latent", 2), ("forced", CLOSE)]
    assert all(kind == "token" for kind, _ in tr.fed[4:]) and tr.exit == "fixed"
    emb = bench.hf.get_input_embeddings()
    with torch.no_grad():
        want = torch.cat([emb(torch.tensor(e.prompt)), P.to(emb.weight.dtype), emb(torch.tensor([CLOSE] + [t for _, t in tr.fed[4:-1]]))])
    torch.testing.assert_close(latent.fed_embeddings(bench, tr).float(), want.float())
    # the pause recipe before CoT feeds nothing after its pauses (the model writes its chain)
    before = latent.PauseTokens({"pause_embeds": P})
    assert before.end is None
    tr2 = latent.run(bench, [e.prompt], before, max_new_tokens=2, readout=False)[0]
    assert [k for k, _ in tr2.fed[:4]] == ["latent", "latent", "latent", "token"]


def test_pause_answer_resumes_exactly(micro_dir, tmp_path):
    kw = {**TINY, "steps": 4, "n_pause": 2, "shared_pause": False}
    run_pause_answer(PauseAnswerConfig(model=str(micro_dir), out_dir=str(tmp_path / "a"), **kw))
    stop = threading.Event()
    cfg = PauseAnswerConfig(model=str(micro_dir), out_dir=str(tmp_path / "b"), **kw)
    part = run_pause_answer(cfg, on_step=lambda row: row["step"] == 2 and stop.set(), cancel=stop)
    assert part["status"] == "cancelled" and part["steps"] == 2 and not (tmp_path / "b" / "final").exists()
    torch.manual_seed(1234)  # the resumed RNG must come from the checkpoint
    again = run_pause_answer(cfg, resume=True)
    assert again["status"] == "done" and again["steps"] == 4
    a, b = tmp_path / "a" / "final", tmp_path / "b" / "final"
    pa, pb = latent.PauseTokens.load(str(a)), latent.PauseTokens.load(str(b))
    assert not torch.equal(pa.tensors["pause_embeds"][0], pa.tensors["pause_embeds"][1])  # distinct vectors when not shared
    torch.testing.assert_close(pb.tensors["pause_embeds"], pa.tensors["pause_embeds"], rtol=0, atol=1e-6)
    ta, tb = _tensors(a), _tensors(b)
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- UPFT


def _upft_cfg(micro_dir, out, **kw):
    return UpftConfig(model=str(micro_dir), out_dir=str(out), prefix_tokens=4, full_ratio=0.25, max_sample_tokens=10, temperature=1.0, **{**TINY, **kw})


def test_upft_trains_the_model_on_its_own_sampled_prefixes(micro_dir, micro, tmp_path, capsys):
    cfg = _upft_cfg(micro_dir, tmp_path / "u")
    data = arith.encode_problems(micro.tokenizer, cfg.problems(seed=2000 + cfg.seed))
    ex = upft_samples(micro, data, cfg)
    full = lr.upft_full_rows(len(data), cfg.full_ratio, cfg.seed)
    assert len(full) == 2 and [x.full for x in ex] == [i in full for i in range(len(data))]
    stops = latent.policies.stop_ids(micro)
    for x in ex:  # prefix rows: exactly prefix_tokens sampled tokens unless the model ended its turn
        n = cfg.max_sample_tokens if x.full else cfg.prefix_tokens
        assert len(x.sample) == n or (x.sample and x.sample[-1] in stops)
    # the targets are the model's own samples at the configured temperature and seed ...
    prefix_idx = [i for i in range(len(data)) if i not in full]
    own = wb.generate_full(micro, [data[i].prompt for i in prefix_idx], chat=False, temperature=1.0, max_new_tokens=4, seed=lr.upft_sample_seed(cfg.seed, False, 0))
    assert [ex[i].sample for i in prefix_idx] == [list(t) for t in own.token_ids]
    other = upft_samples(micro, data, cfg.replace(seed=cfg.seed + 1))
    assert [x.sample for x in other] != [x.sample for x in ex]
    # ... not the reference chain
    assert any(x.sample != (sum(e.steps, []) + e.suffix)[: len(x.sample)] for x, e in zip(ex, data))
    # the loss: cross-entropy of exactly the sampled tokens (prompt excluded), full vocabulary
    model = LatentModel(micro.hf)
    with torch.no_grad():
        got = upft_loss(arith.VocabView(micro.hf), model, ex[:3])
        logits, targets = [], []
        for x in ex[:3]:
            out = micro.hf(input_ids=torch.tensor([x.prompt + x.sample])).logits[0]
            logits.append(out[len(x.prompt) - 1 : len(x.prompt) - 1 + len(x.sample)])
            targets.append(torch.tensor(x.sample))
        want = F.cross_entropy(torch.cat(logits), torch.cat(targets))
    assert got.tokens == sum(len(x.sample) for x in ex[:3])
    torch.testing.assert_close(got.loss, want, rtol=1e-4, atol=1e-4)

    # the recipe trains on these very samples and fine-tunes the model's weights
    res = run_upft(cfg)
    assert res["status"] == "done" and res["full_length_samples"] == 2
    saved = json.loads((tmp_path / "u" / "upft_samples.json").read_text())
    assert [r["ids"] for r in saved["samples"]] == [x.sample for x in ex]
    final = tmp_path / "u" / "final"
    assert json.loads((final / "latent_policy.json").read_text())["method"] == "cot"
    before = {k: v for k, v in micro.hf.state_dict().items()}
    after = _tensors(final)
    changed = [k for k in after if ".layers." in k and not torch.equal(after[k], before[k])]
    assert changed, "UPFT must change the model's own weights"
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])  # not in train_modules
    from workbench.latent.results import row_method

    method, model_dir = row_method(final)
    assert method == "cot" and model_dir == str(final / "model")
    assert latent.load_policy(str(final)) == ("cot", str(final / "model"))  # what eval, the app and the CLI read
    from workbench.cli import main

    capsys.readouterr()
    assert main(["latent", "run", "2+2?", "--model", str(final / "model"), "--method", "trained", "--head", str(final)]) == 2
    err = capsys.readouterr().err
    assert "fine-tuned for explicit chain-of-thought" in err and "Traceback" not in err


def test_upft_resumes_exactly_on_the_saved_samples(micro_dir, tmp_path, monkeypatch):
    run_upft(_upft_cfg(micro_dir, tmp_path / "a", steps=4))
    stop = threading.Event()
    cfg = _upft_cfg(micro_dir, tmp_path / "b", steps=4)
    part = run_upft(cfg, on_step=lambda row: row["step"] == 2 and stop.set(), cancel=stop)
    assert part["status"] == "cancelled" and part["steps"] == 2
    with pytest.raises(ValueError, match="already holds a checkpoint"):  # a fresh run never overwrites the run's samples
        run_upft(cfg)

    def no_sampling(*a, **k):
        raise AssertionError("a resumed run must train on the samples it saved")

    monkeypatch.setattr(lr, "upft_samples", no_sampling)
    torch.manual_seed(1234)
    again = run_upft(cfg, resume=True)
    assert again["status"] == "done" and again["steps"] == 4
    ta, tb = _tensors(tmp_path / "a" / "final"), _tensors(tmp_path / "b" / "final")
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- configs, registry, rows


def test_new_recipes_are_registered_and_check_their_fields():
    from workbench.latent.results import RECIPE_ROWS
    from workbench.train.recipes import RECIPES

    rows = dict((r, label) for label, r in RECIPE_ROWS)
    assert rows["pause"] == "pause tokens before CoT" and "no CoT" in rows["pause-answer"] and rows["upft"].startswith("UPFT")
    for r in rows:
        assert r in lr.RUNNERS and RECIPES[r].run is not None
    bad = [
        (UpftConfig, {"train_modules": [], "lora_rank": 0}, "fine-tunes the model"),
        (UpftConfig, {"temperature": 0.0}, "temperature"),
        (UpftConfig, {"full_ratio": 1.5}, "full_ratio"),
        (UpftConfig, {"prefix_tokens": 0}, "prefix_tokens"),
        (UpftConfig, {"prefix_tokens": 16, "max_sample_tokens": 8}, "max_sample_tokens"),
        (UpftConfig, {"top_p": 0.0}, "top_p"),
        (PauseAnswerConfig, {"n_pause": 0}, "n_pause"),
        (PauseAnswerConfig, {"shared_pause": "yes"}, "shared_pause"),
        (PauseConfig, {"targets": "sampled"}, "targets"),
    ]
    from workbench.errors import InputError

    for cls, kw, field in bad:
        with pytest.raises(InputError, match=field):
            cls(**kw)
    with pytest.raises(InputError, match="pause end marker"):
        latent.PauseTokens({"pause_embeds": torch.zeros(2, 4)}, end="")


def test_new_recipes_on_the_command_line(capsys):
    from workbench.train.recipes import main

    assert main(["upft", "--set", "prefix_tokens=16", "--print-config"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["config_class"] == "UpftConfig" and got["prefix_tokens"] == 16 and got["full_ratio"] == 0.1
    assert main(["pause-answer", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["n_pause"] == 10
    assert main(["upft", "--set", "temperature=0", "--print-config"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_cached_sample_files_are_checked(tmp_path):
    """The UPFT samples and QThink rollouts a run caches: another run's settings are drawn
    again (None); a torn file, the wrong number of rows or rows of other problems are
    FileFormatErrors naming the file and the field."""
    from types import SimpleNamespace

    from workbench.errors import FileFormatError

    data = [SimpleNamespace(problem=SimpleNamespace(id=f"p{i}")) for i in range(2)]
    cfg = UpftConfig(n_train=2)
    header = lr.cache_header(cfg, ("prefix_tokens",))
    assert header["task"] == "arith" and header["prefix_tokens"] == 8 and "max_hops" in header
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"config": header, "samples": [{"id": "p0"}, {"id": "p1"}]}))
    assert lr.read_cached_rows(path, header, "samples", data, "samples") == [{"id": "p0"}, {"id": "p1"}]
    assert lr.read_cached_rows(path, {**header, "seed": 99}, "samples", data, "samples") is None
    path.write_text(json.dumps({"config": header, "samples": [{"id": "p0"}]}))
    with pytest.raises(FileFormatError, match=r"s\.json: field 'samples' must list one entry per training problem \(2\)"):
        lr.read_cached_rows(path, header, "samples", data, "samples")
    path.write_text(json.dumps({"config": header, "samples": [{"id": "p0"}, {"id": "p7"}]}))
    with pytest.raises(FileFormatError, match="entry 1 of 'samples' is not training problem 'p1'"):
        lr.read_cached_rows(path, header, "samples", data, "samples")
    path.write_text('{"config": ')
    with pytest.raises(FileFormatError, match=r"s\.json: the saved samples cannot be read"):
        lr.read_cached_rows(path, header, "samples", data, "samples")
