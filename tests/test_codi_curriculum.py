"""CODI's shared teacher in the projection-head recipe (its loss recomputed independently,
the teacher's hidden states detached as in CODI) and the latent head's curriculum over
latent steps (the stage schedule, the rows each stage trains on, an exact resume)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench import latent
from workbench.errors import InputError
from workbench.train import arith
from workbench.train import latent_recipes as lr
from workbench.train.latent_recipes import LatentHeadConfig, ProjectionConfig, curriculum_rows, curriculum_stage

TINY = dict(n_train=16, eval_n=0, batch_size=4, progress=False, device="cpu")


@pytest.fixture(scope="module")
def micro(micro_dir):
    return wb.load(str(micro_dir), device="cpu")


# --------------------------------------------------------------------------- CODI's teacher


def _reference(hf, head, batch, answer_at, K, w_t, w_d, detach_teacher=True):
    """The shared-teacher loss recomputed row by row (no padding), from full logits."""
    base, emb, out_emb = hf.model, hf.get_input_embeddings(), hf.get_output_embeddings()
    s_logits, s_tgt, t_logits, t_tgt, a_rows, b_rows = [], [], [], [], [], []
    for e, a in zip(batch, answer_at):
        E = emb(torch.tensor([e.prompt]))
        for _ in range(K):
            h = base(inputs_embeds=E, use_cache=False).last_hidden_state[:, -1]
            E = torch.cat([E, head(h)[:, None]], 1)
        P = len(e.prompt)
        o = base(inputs_embeds=torch.cat([E, emb(torch.tensor([e.suffix]))], 1), use_cache=False, output_hidden_states=True)
        S = len(e.suffix)
        s_logits.append(out_emb(o.last_hidden_state[0, P + K - 1 : P + K - 1 + S]))
        s_tgt.append(torch.tensor(e.suffix))
        ids, n = e.cot()
        t = base(input_ids=torch.tensor([ids]), use_cache=False, output_hidden_states=True)
        t_logits.append(out_emb(t.last_hidden_state[0, n - 1 : -1]))
        t_tgt.append(torch.tensor(ids[n:]))
        pos_t = n + sum(len(x) for x in e.steps) + a - 1
        a_rows.append(torch.stack([hs[0, P + K + a - 1] for hs in o.hidden_states[1:]]))  # [L, d]
        b_rows.append(torch.stack([hs[0, pos_t] for hs in t.hidden_states[1:]]))
    ce = F.cross_entropy(torch.cat(s_logits), torch.cat(s_tgt))
    t_ce = F.cross_entropy(torch.cat(t_logits), torch.cat(t_tgt))
    A, B = torch.stack(a_rows, 1), torch.stack(b_rows, 1)  # [L, batch, d]
    if detach_teacher:
        B = B.detach()
    distill = torch.stack([F.smooth_l1_loss(A[l], B[l]) / (B[l].std() + 1e-6) for l in range(A.shape[0])]).mean()
    return ce, t_ce, distill, ce + w_t * t_ce + w_d * distill


def _grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True)


def test_shared_teacher_loss_is_student_ce_plus_teacher_ce_plus_distill(micro_dir):
    from workbench.latent.heads import ProjectionModule

    bench = wb.load(str(micro_dir), device="cpu")  # its own copy: every parameter gets a gradient
    hf, tok = bench.hf.float(), bench.tokenizer
    for p in hf.parameters():
        p.requires_grad_(True)
    d = hf.config.hidden_size
    torch.manual_seed(1)
    head = ProjectionModule(d, 2 * d)
    model = lr.LatentModel(hf, head=head)
    batch = arith.encode_problems(tok, arith.eval_problems("2 steps", 1) + arith.eval_problems("3 steps", 1))
    answer_at = [lr.answer_index(e, tok) for e in batch]
    vocab = arith.VocabView(hf)
    K, w_t, w_d = 2, 0.7, 1.3
    params = [p for p in model.parameters() if p.requires_grad]

    got = lr.projection_loss(vocab, model, batch, answer_at, K, w_d, None, w_t)
    ce, t_ce, distill, want = _reference(hf, head, batch, answer_at, K, w_t, w_d)
    assert torch.allclose(got.loss, want, rtol=1e-4, atol=1e-5)
    for name, ref in (("ce", ce), ("teacher_ce", t_ce), ("distill", distill)):
        assert got.metrics[name] == pytest.approx(float(ref.detach()), rel=1e-4, abs=1e-5), name
    # gradients: the teacher's hidden states are a target (detached, as CODI's), its CE trains
    g_got, g_want = _grads(got.loss, params), _grads(want, params)
    W = hf.get_input_embeddings().weight
    used = (W != 0).any(-1)
    for p, a, b in zip(params, g_got, g_want):
        assert (a is None) == (b is None)
        if p is W:  # the restricted loss leaves the unused, all-zero rows of the tied embedding alone
            a, b = a[used], b[used]
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)
    _, _, _, undetached = _reference(hf, head, batch, answer_at, K, w_t, w_d, detach_teacher=False)
    g_und = _grads(undetached, params)
    gap = max(float((a - b).abs().max()) for a, b in zip(g_got, g_und) if a is not None)
    assert gap > 1e-4, "the test cannot tell a detached teacher from an attached one"
    # the teacher CE reaches the weights: without it the gradient changes
    g_no_t = _grads(lr.projection_loss(vocab, model, batch, answer_at, K, w_d, None, 0.0).loss, params)
    assert max(float((a - b).abs().max()) for a, b in zip(g_got, g_no_t) if a is not None) > 1e-4

    # the frozen teacher (the default): no teacher loss, the same distillation target
    frozen = lr._frozen_copy(hf)
    got_f = lr.projection_loss(vocab, model, batch, answer_at, K, w_d, frozen, 1.0)
    assert "teacher_ce" not in got_f.metrics
    assert torch.allclose(got_f.loss, ce + w_d * distill, rtol=1e-4, atol=1e-5)


def test_shared_teacher_recipe_trains_and_records_the_teacher_ce(micro_dir, tmp_path):
    cfg = ProjectionConfig(model=str(micro_dir), out_dir=str(tmp_path / "p"), latent_steps=2, steps=2, teacher="shared", teacher_ce_weight=0.5, **TINY)
    res = lr.run_projection(cfg)
    assert res["status"] == "done"
    rows = [json.loads(x) for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["teacher_ce"] > 0 and r["distill"] >= 0 for r in rows)
    assert all(r["loss"] == pytest.approx(r["ce"] + 0.5 * r["teacher_ce"] + r["distill"], rel=1e-5) for r in rows)
    spec, _ = latent.load_policy(res["final"])
    assert spec.steps == 2


def test_projection_teacher_bad_values():
    from workbench.train.qthink import QThinkConfig

    assert ProjectionConfig().teacher == "frozen" and ProjectionConfig().teacher_ce_weight == 1.0
    with pytest.raises(InputError, match=r"teacher must be 'frozen' .* or 'shared' .*got 'ema'"):
        ProjectionConfig(teacher="ema")
    with pytest.raises(InputError, match="teacher='shared' trains the model itself.*train_modules"):
        ProjectionConfig(teacher="shared", train_modules=[])
    with pytest.raises(InputError, match="teacher_ce_weight"):
        ProjectionConfig(teacher="shared", teacher_ce_weight=-1.0)
    with pytest.raises(InputError, match="a frozen teacher has none"):
        ProjectionConfig(teacher_ce_weight=0.5)
    with pytest.raises(InputError, match="distill_weight"):
        ProjectionConfig(distill_weight=-0.1)
    with pytest.raises(InputError, match="has its own teacher"):
        QThinkConfig(teacher="shared")


# --------------------------------------------------------------------------- latent-head curriculum


def test_curriculum_stage_splits_the_steps_evenly_and_ends_on_the_last_stage():
    def sizes(steps, stages):
        got = [curriculum_stage(t, steps, stages) for t in range(steps)]
        assert got == sorted(got) and got[-1] == stages and got[0] >= 1
        return [got.count(k) for k in range(1, stages + 1)]

    assert sizes(6, 3) == [2, 2, 2]
    assert sizes(7, 3) == [2, 2, 3]
    assert sizes(200, 4) == [50, 50, 50, 50]
    assert sizes(2, 4) == [0, 1, 0, 1]  # fewer steps than stages: the last stage still trains
    assert sizes(5, 1) == [5]


def test_curriculum_rows_keep_the_remaining_steps_as_text(micro):
    tok = micro.tokenizer
    e = arith.encode_problems(tok, arith.eval_problems("3 steps", 1))[0]
    s1, s2, s3 = e.steps
    assert curriculum_rows(e, 1) == (1, s2 + s3 + e.suffix)
    assert curriculum_rows(e, 2) == (2, s3 + e.suffix)
    assert curriculum_rows(e, 3) == curriculum_rows(e, 7) == curriculum_rows(e, None) == (3, e.suffix)
    text = tok.decode(curriculum_rows(e, 1)[1])
    assert text.startswith(tok.decode(s2)) and text.count("</think>") == 1  # no end marker right after the latents


def test_curriculum_unrolls_each_stage_as_intended(micro_dir, tmp_path, monkeypatch):
    """Every training forward at stage k: min(k, n) x c latents (all n x c at the last
    stage), then exactly the remaining steps and the suffix."""
    calls = []
    real = lr.unroll

    def spy(hf, prompts, n_latent, next_latent, after, **kw):
        u = real(hf, prompts, n_latent, next_latent, after, **kw)
        calls.append((prompts, n_latent, after, u))
        return u

    monkeypatch.setattr(lr, "unroll", spy)
    c = 2
    cfg = LatentHeadConfig(model=str(micro_dir), out_dir=str(tmp_path / "l"), max_reasoning_steps=3, thoughts_per_step=c, max_internal_tokens=8, steps=6, **TINY)
    res = lr.run_latent_head(cfg)
    assert res["status"] == "done" and res["curriculum"] == {"kind": "steps", "stages": 3, "steps_per_stage": [2, 2, 2]}
    data = {tuple(e.prompt): e for e in lr.setup(cfg).data}
    assert len(calls) == 6  # batch_size groups of one step count, one group per step
    for t, (prompts, n_latent, after, u) in enumerate(calls):
        k = [1, 1, 2, 2, 3, 3][t]
        for i, p in enumerate(prompts):
            e = data[tuple(p)]
            m = len(e.steps) if k == 3 else min(k, len(e.steps))
            assert n_latent == m * c and u.n_positions == m * c, (t, i)
            want = sum(e.steps[m:], []) + e.suffix
            assert after[i] == want
            assert u.after_ids[i, : len(want)].tolist() == want and int(u.after_mask[i].sum()) == len(want)
    rows = [json.loads(x) for x in (tmp_path / "l" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == [1, 1, 2, 2, 3, 3]


def _head(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "final" / "latent_head.safetensors"))


def test_curriculum_resume_is_exact(micro_dir, tmp_path):
    """Cancelled in stage 2 and resumed: the same head as an uninterrupted run (a resume
    that restarted the stage count would train step 3 at stage 1)."""
    kw = dict(model=str(micro_dir), max_reasoning_steps=3, max_internal_tokens=8, steps=6, **TINY)
    whole = lr.run_latent_head(LatentHeadConfig(out_dir=str(tmp_path / "a"), **kw))
    assert whole["status"] == "done"
    cfg = LatentHeadConfig(out_dir=str(tmp_path / "b"), **kw)
    stop = {"now": False}
    part = lr.run_latent_head(cfg, on_step=lambda row: stop.update(now=row["step"] == 3), cancel=lambda: stop["now"])
    assert part["status"] == "cancelled" and part["steps"] == 3
    with pytest.raises(InputError, match="move the stage boundaries; resume with steps=6"):
        lr.run_latent_head(LatentHeadConfig(out_dir=str(tmp_path / "b"), **{**kw, "steps": 8}), resume=True, bench=object())
    again = lr.run_latent_head(cfg, resume=True)
    assert again["status"] == "done" and again["steps"] == 6
    a, b = _head(tmp_path / "a"), _head(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == [1, 1, 2, 2, 3, 3]


def test_curriculum_bad_values_and_old_checkpoints(tmp_path):
    assert (LatentHeadConfig().curriculum, LatentHeadConfig().curriculum_stages) == ("steps", 0)
    with pytest.raises(InputError, match=r"curriculum must be 'steps' .* or 'none' .*got 'linear'"):
        LatentHeadConfig(curriculum="linear")
    with pytest.raises(InputError, match="curriculum_stages"):
        LatentHeadConfig(curriculum_stages=-1)
    with pytest.raises(InputError, match="curriculum_stages .* is for curriculum='steps'"):
        LatentHeadConfig(curriculum="none", curriculum_stages=2)
    # a checkpoint from before the curriculum trained fully latent: resuming it with one is refused
    ck = tmp_path / "l" / "checkpoint"
    ck.mkdir(parents=True)
    (ck / "config.json").write_text(json.dumps({"recipe": "latent-head", "steps": 2, "pairing": "same"}))
    (ck / "state.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(InputError, match="predates the curriculum.*resume it with curriculum='none', not 'steps'"):
        lr.run_latent_head(LatentHeadConfig(out_dir=str(tmp_path / "l"), progress=False), resume=True, bench=object())
