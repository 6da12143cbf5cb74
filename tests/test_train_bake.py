"""Baking steering into weights: exact folds (equivalence with hooked models, stock
transformers loading) and distillation through the shared trainer."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from workbench.arch import decoder_layers
from workbench.edits import Ablate, AddVector, apply_edits
from workbench.inputs import pad_left
from workbench.train.bake import BakeConfig, bake, fold_ablation, fold_offset, residual_writers

BAKE_LAYER, BAKE_SCALE = 10, 4.0  # the acceptance setting (see test_bake_acceptance_on_smol)
PROMPTS = ["The weather today is", "I went to the market and bought some bread"]


def _logits(hf, tok, prompts=PROMPTS):
    b = pad_left([tok(p)["input_ids"] for p in prompts], tok.pad_token_id)
    with torch.no_grad():
        return hf(**b.model_kwargs()).logits.float(), b.attention_mask.bool()


def _project_hook(u):
    def hook(module, args, output):
        return output - (output @ u).unsqueeze(-1) * u

    return hook


def _direction(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g)


@pytest.mark.parametrize("bench_name", ["smol", "qwen_tiny"])
def test_ablation_fold_equals_projection_of_every_residual_write(request, bench_name):
    bench = request.getfixturevalue(bench_name)
    hf, tok = bench.hf, bench.tokenizer
    u = _direction(bench.arch.d_model)
    u = u / u.norm()
    folded = fold_ablation(hf, u)
    got, mask = _logits(folded, tok)
    # independent reference: hooks projecting u out of the embedding output and every
    # attention / DeltaNet / MLP output, on the untouched model
    mods = [hf.get_input_embeddings()] + [m for _, m in residual_writers(hf)]
    assert len(mods) == 1 + 2 * bench.arch.n_layers
    handles = [m.register_forward_hook(_project_hook(u)) for m in mods]
    try:
        want, _ = _logits(hf, tok)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-4, atol=2e-4)
    # the base model is untouched, and the fold is NOT the block-output-only ablation
    plain, _ = _logits(hf, tok)
    with apply_edits(hf, [Ablate(l, u) for l in range(bench.arch.n_layers)]):
        block_only, _ = _logits(hf, tok)
    assert (block_only[mask] - want[mask]).abs().max() > 1e-3
    assert (plain[mask] - want[mask]).abs().max() > 1e-3


def test_ablation_fold_residual_has_no_component_and_loads_in_stock_transformers(qwen_tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    hf, tok = qwen_tiny.hf, qwen_tiny.tokenizer
    u = _direction(qwen_tiny.arch.d_model, seed=3)
    folded = fold_ablation(hf, u)
    u = u / u.norm()
    b = pad_left([tok(p)["input_ids"] for p in PROMPTS], tok.pad_token_id)
    with torch.no_grad():
        out = folded(**b.model_kwargs(), output_hidden_states=True)
    for h in out.hidden_states[:-1]:  # embeddings and every block output (the last is normed)
        assert (h @ u).abs().max() < 1e-4
    assert hf.config.tie_word_embeddings and not folded.config.tie_word_embeddings
    assert hf.lm_head.weight is hf.get_input_embeddings().weight  # original still tied
    folded.save_pretrained(tmp_path)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    got, mask = _logits(stock, tok)
    want, _ = _logits(folded, tok)
    torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=1e-5)


def test_offset_fold_equals_hooked_addvector_on_smol(smol):
    hf, tok = smol.hf, smol.tokenizer
    layer = 12
    v = _direction(smol.arch.d_model, seed=1)
    v = v / v.norm() * 4.0
    folded = fold_offset(hf, layer, v, scale=1.5)
    assert folded.config.mlp_bias and not getattr(hf.config, "mlp_bias", False)
    assert decoder_layers(hf)[layer].mlp.down_proj.bias is None  # base untouched
    got, mask = _logits(folded, tok)
    with apply_edits(hf, [AddVector(layer, v, 1.5)]):
        want, _ = _logits(hf, tok)
    plain, _ = _logits(hf, tok)
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-4, atol=2e-4)
    assert (plain[mask] - want[mask]).abs().max() > 1e-2


def test_offset_fold_checkpoint_loads_in_stock_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    v = _direction(32, seed=2)
    folded = fold_offset(hf, 1, v, 2.0)
    folded.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["mlp_bias"] is True
    stock = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), apply_edits(hf, [AddVector(1, v, 2.0)]):
        want = hf(input_ids=ids).logits
    with torch.no_grad():
        got = stock(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_folds_refuse_what_they_cannot_do(qwen_tiny):
    with pytest.raises(ValueError, match="no MLP bias.*distillation"):
        fold_offset(qwen_tiny.hf, 2, torch.ones(qwen_tiny.arch.d_model))
    with pytest.raises(ValueError, match="d_model is 64"):
        fold_ablation(qwen_tiny.hf, torch.ones(576))
    with pytest.raises(ValueError, match="non-zero"):
        fold_ablation(qwen_tiny.hf, torch.zeros(64))


def test_distillation_bake_on_qwen_tiny_saves_a_stock_checkpoint(qwen_tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from workbench.steering import SteeringVector

    d = qwen_tiny.arch.d_model
    vec = SteeringVector(
        directions={3: _direction(d, seed=5) * 3.0}, model_name=qwen_tiny.name, model_family=qwen_tiny.arch.family, method="custom",
        d_model=d, n_layers=qwen_tiny.arch.n_layers,
    )
    # Qwen3.5's 248k vocabulary makes every logit tensor large: a short run on a small corpus
    cfg = BakeConfig(out_dir=str(tmp_path / "bake"), steps=8, batch_size=4, lr=3e-2, lora_rank=4, ckpt_every=4,
                     warmup_steps=0, schedule="constant", progress=False, hidden_weight=0.1, max_tokens=12)
    corpus = ["The weather today is", "I think that the new café", "My favourite food is", "We walked to the station",
              "The meeting starts at", "She opened the window and"]
    res = bake(qwen_tiny, vec, cfg, corpus=corpus, heldout=["Tell me about your day.", "The book on the table"],
               neutral=["Yesterday I went to the market and"])
    rows = res.train.history
    assert rows[-1]["kl"] < rows[0]["kl"]  # training reduces KL(teacher || student)
    rep = res.report
    assert rep.n_prompts == 2 and rep.n_neutral == 1 and rep.kl_original_steered > 0
    # stock transformers loads the merged checkpoint, no LoRA, same outputs
    stock = AutoModelForCausalLM.from_pretrained(res.model_dir, dtype=torch.float32)
    assert not any("lora" in n for n, _ in stock.named_parameters())
    got, mask = _logits(stock, qwen_tiny.tokenizer)
    want, _ = _logits(res.model, qwen_tiny.tokenizer)
    torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=1e-5)
    meta = json.loads((res.model_dir / "bake_report.json").read_text())
    assert meta["report"]["kl_ratio"] == pytest.approx(rep.kl_ratio)
    # the session's bench is untouched (the student is a copy)
    assert not any("lora" in n for n, _ in qwen_tiny.hf.named_parameters())


def test_bake_refuses_a_vector_for_another_model(qwen_tiny, tmp_path):
    from workbench.steering import SteeringVector

    vec = SteeringVector(directions={3: torch.ones(576)}, model_name="smollm2-135m", model_family="llama", d_model=576, n_layers=30, method="custom")
    with pytest.raises(ValueError, match="d_model"):
        bake(qwen_tiny, vec, BakeConfig(out_dir=str(tmp_path / "x"), progress=False))
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_bake_acceptance_on_smol(smol, tmp_path):
    """Issue acceptance on the default model, held-out probe prompts: KL(baked || steered)
    <= 20% of KL(original || steered), >= 70% of the concept log-prob shift retained;
    side-effect KL on neutral prompts reported (printed)."""
    import probes
    from transformers import AutoModelForCausalLM

    from workbench import steering as st

    ps = probes.load_set("sentiment")
    layer = BAKE_LAYER
    vec = st.extract(smol, ps.as_tuples("train"), layers=[layer], method=st.mean_diff())
    cfg = BakeConfig(out_dir=str(tmp_path / "bake"), scale=BAKE_SCALE, progress=False, probe_set="sentiment")
    res = bake(smol, vec, cfg)
    rep = res.report
    print(rep.summary())
    assert rep.kl_ratio <= 0.2, rep.summary()
    assert rep.concept_retained >= 0.7, rep.summary()
    stock = AutoModelForCausalLM.from_pretrained(res.model_dir, dtype=torch.float32)
    got, mask = _logits(stock, smol.tokenizer)
    want, _ = _logits(res.model, smol.tokenizer)
    torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=1e-4)


def test_bake_summary_says_what_the_concept_numbers_mean():
    from workbench.train.bake import BakeReport

    rep = BakeReport(n_prompts=4, kl_baked_steered=0.1, kl_original_steered=1.0, concept_shift_steered=0.789, concept_shift_baked=1.809)
    s = rep.summary()
    assert "moves by +1.809 nats in the baked model and +0.789 under the steering it learned from: 229% of the steered shift retained" in s
    assert "further than the steering did" in s
    half = BakeReport(n_prompts=4, kl_baked_steered=0.1, kl_original_steered=1.0, concept_shift_steered=1.0, concept_shift_baked=0.5)
    assert "50% of the steered shift retained" in half.summary() and "further" not in half.summary()
