"""Latent-SFT (DJC-GO-SOLO/Latent-SFT): its two attention masks, the rows that realise them,
the stage-2 loss, the saved policy in the engine, and exact resume across the stages."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench import latent
from workbench.latent.latent_sft import LatentSFT, vocab_superposition
from workbench.train import arith
from workbench.train.latent_sft import (
    LABELS_FILE,
    LatentSFTConfig,
    chunks,
    decoder_kinds,
    induction_mask,
    induction_positions,
    run_latent_sft,
    stage2_loss,
)

TINY = dict(n_train=8, eval_n=0, batch_size=2, progress=False, device="cpu", stage1_steps=2, steps=2, compression_rate=6, topk_interpolation=4, max_latent_steps=6)


@pytest.fixture(scope="module")
def micro(micro_dir):
    return wb.load(str(micro_dir), device="cpu")


def test_the_two_masks_on_a_hand_checked_example():
    # encoder input: prompt p0 p1, chain t1 t2 | C1 | t3 t4 | C2 | t5 | C3, then </think> (k = 2)
    comp = [0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0]
    got = induction_mask([bool(c) for c in comp]).int()
    want = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],  # C1: the text before it and itself
        [1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0],  # text never sees a compress token
        [1, 1, 1, 1, 0, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0],  # C2: not C1
        [1, 1, 1, 1, 0, 1, 1, 0, 1, 0, 0],
        [1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0],  # C3: not C1, C2
        [1, 1, 1, 1, 0, 1, 1, 0, 1, 0, 1],
    ])  # fmt: skip
    assert torch.equal(got, want)
    # decoder input: p0 p1 | L1 t3 t4 | L2 t5 | L3 | </think> a
    kinds = decoder_kinds(2, chunks([1, 2, 3, 4, 5], 2), 2)
    assert kinds == ["p", "p", "L", "t", "t", "L", "t", "L", "a", "a"]
    from workbench.train.latent_sft import supervision_mask

    want = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],  # L1: the prompt and itself
        [0, 0, 1, 1, 0, 0, 0, 0, 0, 0],  # a chunk: its latent and itself
        [0, 0, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 1, 0, 0, 0, 0],  # L2: prompt, L1, itself (no text)
        [0, 0, 0, 0, 0, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 1, 0, 1, 0, 0],
        [1, 1, 1, 0, 0, 1, 0, 1, 1, 0],  # </think>: prompt and every latent, no text
        [1, 1, 1, 0, 0, 1, 0, 1, 1, 1],
    ])  # fmt: skip
    assert torch.equal(supervision_mask(kinds).int(), want)
    # the encoder rows keep the interleaved sequence's positions: C1 at 4, C3 at 9
    assert induction_positions(2, 5, 2, 1) == [0, 1, 2, 3, 4]
    assert induction_positions(2, 5, 2, 3) == [0, 1, 2, 3, 5, 6, 8, 9]


def test_stage2_loss_is_ce_plus_kl_by_hand(micro):
    hf = micro.hf
    vocab = arith.VocabView(hf)
    e = arith.encode_problems(micro.tokenizer, arith.eval_problems("2 steps", 2))
    W = hf.get_input_embeddings().weight
    used = (W != 0).any(-1).nonzero()[:, 0]
    g = torch.Generator().manual_seed(1)
    rows = []
    for x, m in zip(e, (2, 3)):
        idx = used[torch.randint(0, len(used), (m, 3), generator=g)]
        idx[0, 2] = 5  # an all-zero row of the compact vocabulary: logit exactly 0
        p = torch.rand(m, 3, generator=g) + 0.1
        rows.append((x.prompt, p, idx, x.suffix))
    with torch.no_grad():
        loss, parts, n = stage2_loss(vocab, hf, rows, ce_w=0.7, kl_w=1.3)
        ces, kls = [], []
        for prompt, p, idx, suffix in rows:
            P, m = len(prompt), p.shape[0]
            lat = (p[..., None] * W[idx]).sum(-2)
            E = torch.cat([W[torch.tensor(prompt)], lat, W[torch.tensor(suffix)]])[None]
            logits = hf(inputs_embeds=E).logits[0].float()
            ces.append(F.cross_entropy(logits[P + m - 1 : P + m - 1 + len(suffix)], torch.tensor(suffix), reduction="sum"))
            q = p / p.sum(-1, keepdim=True)
            lp = torch.log_softmax(logits[P - 1 : P - 1 + m], -1).gather(-1, idx)
            kls.append((q * (q.log() - lp)).sum(-1).mean())
        ce = sum(ces) / sum(len(r[3]) for r in rows)
        kl = sum(kls) / len(rows)
    assert n == sum(len(r[3]) for r in rows)
    torch.testing.assert_close(torch.tensor(parts["ce"]), ce, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(parts["kl"]), kl, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, 0.7 * ce + 1.3 * kl, atol=1e-4, rtol=1e-4)


def test_latent_sft_trains_saves_and_runs_in_the_engine(micro_dir, tmp_path):
    cfg = LatentSFTConfig(model=str(micro_dir), out_dir=str(tmp_path / "r"), **TINY)
    res = run_latent_sft(cfg)
    assert res["status"] == "done" and [s["phase"] for s in res["stage1"]] == ["encoder", "decoder", "union"]
    for d in ("stage1-encoder", "stage1-decoder", "stage1-union", "stage2"):
        assert wb.train.read_checkpoint(tmp_path / "r" / d / "checkpoint").step == 2
    assert (tmp_path / "r" / LABELS_FILE).is_file()
    assert res["mean_latents"] < res["mean_chain_tokens"]
    spec, model = latent.load_policy(res["final"])
    assert isinstance(spec, LatentSFT) and spec.top_k == 4 and spec.max_steps == 6 and model.endswith("model")
    bench = wb.load(model, device="cpu")
    p = arith.eval_problems("2 steps", 1)[0]
    prompt = arith.encode_problems(bench.tokenizer, [p])[0].prompt
    tr = latent.run(bench, [prompt], spec, max_new_tokens=3, readout=False)[0]
    assert tr.latent_steps >= 1
    W = bench.hf.get_input_embeddings().weight
    with torch.no_grad():  # every fed latent is the top-k superposition of the logits before it
        for step in tr.steps:
            upto = next(i for i, (k, v) in enumerate(tr.fed) if k == "latent" and v == step.index)
            E = latent.fed_embeddings(bench, tr, upto=upto)
            logits = bench.hf(inputs_embeds=E[None]).logits[0, -1]
            want, probs, idx = vocab_superposition(logits[None], W, 4)
            torch.testing.assert_close(step.latent.float(), want[0].float(), atol=1e-4, rtol=1e-4)


def _model_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(next((folder / "model").glob("*.safetensors"))))


def test_latent_sft_resumes_exactly(micro_dir, tmp_path):
    a = run_latent_sft(LatentSFTConfig(model=str(micro_dir), out_dir=str(tmp_path / "a"), **TINY))
    assert a["status"] == "done"
    for stop_at in (3, 7):  # inside stage 1 (decoder phase), inside stage 2
        stop, calls = threading.Event(), []
        cfg = LatentSFTConfig(model=str(micro_dir), out_dir=str(tmp_path / f"b{stop_at}"), **TINY)

        def on_step(row):
            calls.append(row["step"])
            if len(calls) == stop_at:
                stop.set()

        part = run_latent_sft(cfg, on_step=on_step, cancel=stop)
        assert part["status"] == "cancelled" and not (tmp_path / f"b{stop_at}" / "final").exists()
        torch.manual_seed(1234)  # the resumed RNG (Gumbel noise included) comes from the checkpoints
        again = run_latent_sft(cfg, resume=True)
        assert again["status"] == "done"
        ta, tb = _model_tensors(tmp_path / "a" / "final"), _model_tensors(tmp_path / f"b{stop_at}" / "final")
        for k in ta:
            torch.testing.assert_close(tb[k], ta[k], rtol=0, atol=1e-6)


def test_latent_sft_config_and_registry():
    from workbench.errors import InputError
    from workbench.train.latent_recipes import RUNNERS
    from workbench.train.recipes import RECIPES

    assert RUNNERS["latent-sft"][0] is LatentSFTConfig and RECIPES["latent-sft"].run is not None
    for kw, field in [
        ({"compression_rate": 0}, "compression_rate"), ({"topk_interpolation": 0}, "topk_interpolation"), ({"stage1_steps": 0}, "stage1_steps"),
        ({"stage1_phases": ["union", "encoder"]}, "stage1_phases"), ({"stage1_phases": []}, "stage1_phases"), ({"kl_w": -1.0}, "kl_w"),
        ({"gumbel_temperature": 0.0}, "gumbel_temperature"), ({"add_gumbel_noise": "yes"}, "add_gumbel_noise"), ({"max_latent_steps": 0}, "max_latent_steps"),
        ({"train_modules": [], "lora_rank": 0}, "train_modules"),
    ]:  # fmt: skip
        with pytest.raises(InputError, match=field):
            LatentSFTConfig(**kw)
    with pytest.raises(ValueError, match="top_k"):
        LatentSFT(top_k=0)


def test_latent_sft_refuses_a_model_without_think(smol, tmp_path):
    with pytest.raises(ValueError, match="</think>"):
        run_latent_sft(LatentSFTConfig(model="smollm2-135m", out_dir=str(tmp_path / "x"), **TINY), bench=smol)
