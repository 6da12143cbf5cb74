"""Head files: loading (.safetensors, weights-only .pt, folder + adapter_config.json, hub
forms offline) and validation before any generation starts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import workbench.generate as gen_mod
from workbench import latent
from workbench.errors import NonFiniteError
from workbench.latent.heads import random_latent_head_tensors, random_projection_tensors


@pytest.fixture
def no_forward(monkeypatch):
    """Any model forward inside the loop fails the test: errors must come first."""

    def boom(*a, **k):
        raise AssertionError("generation started before validation")

    monkeypatch.setattr(gen_mod, "forward_embeds", boom)


def _write_head(tmp_path, tensors, cfg=None):
    save_file(tensors, str(tmp_path / "latent_head.safetensors"))
    if cfg is not None:
        (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_latent_head_loads_from_folder_and_file(qwen_tiny, tmp_path):
    t = random_latent_head_tensors(qwen_tiny.hf, seed=0)
    _write_head(tmp_path, t, {"think_close_token_id": 248069, "max_internal_tokens": 12, "chunk_size": 3})
    a = latent.LatentHead.load(str(tmp_path))
    b = latent.LatentHead.load(str(tmp_path / "latent_head.safetensors"), chunk_size=1)
    assert (a.max_internal_tokens, a.chunk_size, b.chunk_size) == (12, 3, 1)
    mod = a.module(qwen_tiny)
    assert type(mod.core.layer).__name__ == "Qwen3_5DecoderLayer"
    for k, v in t.items():
        assert torch.equal(mod.state_dict()[k].float(), v)


def test_mismatches_listed_all_at_once(qwen_tiny, smol, tmp_path, no_forward):
    t = random_latent_head_tensors(smol.hf, seed=0)  # d_model 576 vs 64
    t["core.extra.weight"] = torch.zeros(3)
    del t["to_embed.weight"]
    pol = latent.LatentHead.load(str(_write_head(tmp_path, t)))
    with pytest.raises(ValueError) as e:
        latent.run(qwen_tiny, "hi", pol)
    msg = str(e.value)
    assert "head d_model 576" in msg and "base d_model 64" in msg
    assert "missing tensor to_embed.weight" in msg and "unexpected tensor core.extra.weight" in msg
    assert "core.layer.self_attn.q_proj.weight has shape" in msg


def test_vocab_and_budget_and_nan_errors(qwen_tiny, tmp_path, no_forward):
    t = random_latent_head_tensors(qwen_tiny.hf, seed=0)
    with pytest.raises(ValueError, match=r"think_close_token_id must be a token id in \[0, 248320\)"):
        latent.run(qwen_tiny, "hi", latent.LatentHead(t, think_close_token_id=300000))
    for budget in (0, 1):
        with pytest.raises(ValueError, match="max_internal_tokens must be an integer >= chunk_size"):
            latent.run(qwen_tiny, "hi", latent.LatentHead(t, max_internal_tokens=budget, chunk_size=2))
    with pytest.raises(ValueError, match="coconut steps must be an integer >= 1"):
        latent.run(qwen_tiny, "hi", latent.Coconut(steps=0))
    with pytest.raises(ValueError, match="soft-thinking max_steps"):
        latent.run(qwen_tiny, "hi", latent.SoftThinking(), steps=0)
    bad = dict(t)
    bad["core.norm.weight"] = bad["core.norm.weight"].clone()
    bad["core.norm.weight"][0] = float("nan")
    with pytest.raises(ValueError, match="core.norm.weight contains NaN"):
        latent.run(qwen_tiny, "hi", latent.LatentHead(bad))


def test_missing_think_close_token(smol, no_forward):
    t = random_latent_head_tensors(smol.hf, seed=0)
    with pytest.raises(ValueError, match="needs a '</think>' token.*smollm2-135m"):
        latent.run(smol, "hi", latent.LatentHead(t))
    with pytest.raises(ValueError, match="cold stop forces '</think>'"):
        latent.run(smol, "hi", latent.SoftThinking())
    with pytest.raises(ValueError, match="needs a '</think>' token"):
        latent.run(smol, "hi", latent.Coconut(stop="self_exit"))
    with pytest.raises(ValueError, match="not a single token"):
        latent.run(smol, "hi", latent.Coconut(end="<bot> marker"))


def test_nan_latent_at_runtime(qwen_tiny):
    t = random_projection_tensors(64, seed=0)
    t["mlp.0.weight"] = torch.full_like(t["mlp.0.weight"], 3e38)  # finite weights, overflowing output
    with pytest.raises(NonFiniteError, match="projection: latent vector .* contains NaN/inf"):
        latent.run(qwen_tiny, "hi", latent.ProjectionHead(t, steps=2))


def test_projection_pt_is_weights_only_and_validated(qwen_tiny, tmp_path, no_forward):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"mlp.0.weight": Evil()}, tmp_path / "projection_head.pt")
    with pytest.raises(ValueError, match="weights-only"):
        latent.ProjectionHead.load(str(tmp_path / "projection_head.pt"))
    t = random_projection_tensors(32, seed=0)  # d_model 32 vs 64
    t.pop("mlp.3.bias")
    torch.save(t, tmp_path / "p2.pt")
    pol = latent.ProjectionHead.load(str(tmp_path / "p2.pt"))
    with pytest.raises(ValueError) as e:
        latent.run(qwen_tiny, "hi", pol)
    assert "head d_model 32" in str(e.value) and "missing tensor mlp.3.bias" in str(e.value)


@pytest.mark.parametrize("ref", ["someone/latent-head", "someone/latent-head:weights/latent_head.safetensors", "hf://someone/latent-head/latent_head.safetensors"])
def test_hub_forms_offline_give_clear_error(ref, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    from workbench.errors import MissingFileError

    with pytest.raises(MissingFileError, match="could not fetch .* from the hub repo 'someone/latent-head'.*offline"):
        latent.LatentHead.load(ref)


def test_missing_local_file(tmp_path):
    from workbench.errors import MissingFileError

    with pytest.raises(MissingFileError, match="not found"):
        latent.LatentHead.load(str(tmp_path / "nope" / "latent_head.safetensors"))
    with pytest.raises(MissingFileError, match="has no latent_head.safetensors"):
        latent.LatentHead.load(str(tmp_path))


# --------------------------------------------------------------------------- pass-through start

PROMPT_IDS = "<|im_start|>user\nWhat is 7 times 6?<|im_end|>\n<|im_start|>assistant\n<think>\n"
CLOSE = 248069  # </think>


@torch.no_grad()
def _greedy_cot(hf, ids, n_think, close, max_new, stops):
    """Plain transformers greedy decoding, no cache: `n_think` greedy tokens (stopping at
    `close`), then `close` fed as an ordinary token, then up to `max_new` visible tokens."""
    seq = list(ids)
    think = []
    for _ in range(n_think):
        t = int(hf(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
        if t == close:
            break
        think.append(t)
        seq.append(t)
    seq.append(close)
    vis = []
    while len(vis) < max_new:
        t = int(hf(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
        vis.append(t)
        if t in stops:
            break
        seq.append(t)
    return think, vis


def test_passthrough_start_is_greedy_cot_on_equal_rms_embeddings(qwen_tiny):
    """Every used embedding row rescaled to one RMS: the pass-through head feeds exactly the
    greedy token's embedding, so the run is greedy decoding with the thinking tokens fed as
    ordinary tokens (then </think>, then the same visible answer)."""
    from workbench.latent.heads import passthrough_latent_head_tensors
    from workbench.latent.policies import stop_ids

    bench, hf = qwen_tiny, qwen_tiny.hf
    W = hf.get_input_embeddings().weight
    saved = W.detach().clone()
    try:
        with torch.no_grad():
            ms = W.pow(2).mean(-1, keepdim=True)
            W.copy_(torch.where(ms > 0, W * (0.02 / ms.clamp_min(1e-30).sqrt()), W))
        t = passthrough_latent_head_tensors(hf, seed=1)
        assert torch.allclose(t["to_embed.weight"], torch.eye(64) * 0.02, rtol=1e-5)
        ids = bench.tokenizer.encode(PROMPT_IDS)
        n = 5
        for pairing in ("same", "next"):
            pol = latent.LatentHead(t, think_close_token_id=CLOSE, max_internal_tokens=n, pairing=pairing)
            tr = latent.run(bench, ids, pol, max_new_tokens=6, chat=False, readout=False)
            think, vis = _greedy_cot(hf, ids, n, CLOSE, 6, stop_ids(bench))
            assert len(think) >= 2
            assert [s.head_token for s in tr.steps] == think
            assert tr.exit == ("maxed" if len(think) == n else "self_exit")
            for s in tr.steps:
                e = W[s.head_token].detach().float()
                assert torch.allclose(s.latent, e, rtol=1e-5, atol=1e-7), (s.index, float((s.latent - e).abs().max()))
            assert tr.visible_ids == vis
    finally:
        with torch.no_grad():
            W.copy_(saved)


@pytest.mark.parametrize("which", ["qwen_tiny", "smol"])
def test_passthrough_start_feeds_each_greedy_token_scaled(which, request):
    """On a general model the fed vector is the greedy token's embedding times
    c / r(e): cosine 1, and exactly the documented scale (c = mean r over non-zero rows,
    r(e) = sqrt(ms(e) (1 + eps) + eps^2))."""
    from workbench.latent.heads import passthrough_latent_head_tensors

    bench = request.getfixturevalue(which)
    hf = bench.hf
    t = passthrough_latent_head_tensors(hf, seed=0)
    W = hf.get_input_embeddings().weight.detach().float()
    eps = float(hf.config.get_text_config().rms_norm_eps)
    ms = W.pow(2).mean(-1)
    r = (ms * (1 + eps) + eps**2).sqrt()
    c = float(r[ms > 0].mean())
    assert torch.allclose(t["to_embed.weight"], torch.eye(W.shape[1]) * c, rtol=1e-5)
    close = CLOSE if which == "qwen_tiny" else 2
    pol = latent.LatentHead(t, think_close_token_id=close, max_internal_tokens=4)
    tr = latent.run(bench, "What is 7 times 6?", pol, max_new_tokens=1, readout=False)
    assert tr.latent_steps >= 1
    for s in tr.steps:
        e = W[s.head_token]
        assert float(torch.nn.functional.cosine_similarity(s.latent, e, dim=0)) > 1 - 1e-5
        assert torch.allclose(s.latent, e * (c / r[s.head_token]), rtol=1e-4, atol=1e-6)


def test_passthrough_layer_is_identity_and_trainable(qwen_tiny):
    from workbench.latent.heads import LatentHeadModule, passthrough_init_

    head = LatentHeadModule(qwen_tiny.hf)
    info = passthrough_init_(head, qwen_tiny.hf)
    assert info["zeroed"] == ["self_attn.o_proj.weight", "mlp.down_proj.weight"]
    sd = head.state_dict()
    assert torch.equal(sd["core.fc.weight"][:, :64], torch.eye(64)) and not sd["core.fc.weight"][:, 64:].any()
    for k in ("core.pre_fc_norm_embedding.weight", "core.pre_fc_norm_hidden.weight", "core.norm.weight"):
        assert not sd[k].any()  # Qwen3.5's x * (1 + w): gain 1 at w = 0
    assert sd["core.layer.self_attn.v_proj.weight"].std() > 0.01  # the rest random: gradients reach o_proj


# --------------------------------------------------------------------------- prompt pairing


def test_pairing_default_is_the_reference_and_is_read_from_the_adapter(qwen_tiny, tmp_path):
    t = random_latent_head_tensors(qwen_tiny.hf, seed=0)
    assert latent.LatentHead(t).pairing == "same"
    _write_head(tmp_path, t, {"think_close_token_id": CLOSE})
    assert latent.LatentHead.load(str(tmp_path)).pairing == "same"  # unrecorded: as the reference runtime ran it
    _write_head(tmp_path, t, {"think_close_token_id": CLOSE, "pairing": "next"})
    assert latent.LatentHead.load(str(tmp_path)).pairing == "next"
    assert latent.LatentHead.load(str(tmp_path), pairing="same").pairing == "same"
    (tmp_path / "adapter_config.json").unlink()
    assert latent.LatentHead.load(str(tmp_path)).pairing == "same"


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w)  # Qwen3.5: zero-centred


@torch.no_grad()
def _reference_latents(hf, ids, T, pairing, close, budget):
    """The reference runtime's loop in plain torch over the transformers model: no cache
    anywhere, no workbench code. The head's layer is a fresh transformers decoder layer
    (eager attention, an explicit causal mask) over every head input so far."""
    import copy

    cfg = copy.deepcopy(hf.config)
    cfg.num_hidden_layers, cfg.layer_types = 1, ["full_attention"]
    cfg.intermediate_size = int(T["core.layer.mlp.gate_proj.weight"].shape[0])
    cfg._attn_implementation = "eager"
    layer_cls = type(next(l for l in hf.model.layers if hasattr(l, "self_attn")))
    layer = layer_cls(cfg, 0)
    layer.load_state_dict({k[len("core.layer.") :]: v for k, v in T.items() if k.startswith("core.layer.")})
    eps = cfg.rms_norm_eps
    E = hf.get_input_embeddings().weight
    rotary = hf.model.rotary_emb

    def fuse(tok, h):
        x = torch.cat([_rms(E[tok], T["core.pre_fc_norm_embedding.weight"], eps), _rms(h, T["core.pre_fc_norm_hidden.weight"], eps)], -1)
        return x @ T["core.fc.weight"].T

    def head(xs):
        x = torch.stack(xs)[None]
        n = x.shape[1]
        pos = torch.arange(n)[None]  # head position = index in the head's sequence
        mask = torch.full((n, n), torch.finfo(x.dtype).min).triu(1)[None, None]
        y = layer(x, position_embeddings=rotary(x, pos), attention_mask=mask, position_ids=pos)
        y = y[0] if isinstance(y, tuple) else y
        return _rms(y[0, -1], T["core.norm.weight"], eps) @ T["to_embed.weight"].T

    seq = [E[i] for i in ids]
    hid = hf.model(inputs_embeds=torch.stack(seq)[None]).last_hidden_state[0]
    P = len(ids)
    if pairing == "same":  # token t with hidden t, t = 0..P-1
        xs = [fuse(ids[t], hid[t]) for t in range(P)]
    else:  # token t+1 with hidden t, t = 0..P-2
        xs = [fuse(ids[t + 1], hid[t]) for t in range(P - 1)]
    lats, toks = [], []
    while len(lats) < budget:
        h = hf.model(inputs_embeds=torch.stack(seq)[None]).last_hidden_state[0, -1]
        tok = int(hf.lm_head(h).argmax())
        if tok == close:
            break
        xs.append(fuse(tok, h))
        lat = head(xs)
        lats.append(lat)
        toks.append(tok)
        seq.append(lat)
    return lats, toks


@pytest.mark.parametrize("pairing", ["same", "next"])
def test_prefill_pairing_matches_a_plain_transformers_reference(qwen_tiny, pairing):
    """Two prompts of different lengths in one batch (left padding), each row's fed
    latents against the plain-torch reference of its own pairing; the other pairing's
    reference differs (the test tells the two apart)."""
    bench, hf = qwen_tiny, qwen_tiny.hf
    T = random_latent_head_tensors(hf, seed=5, scale=0.1)
    rows = [bench.tokenizer.encode(PROMPT_IDS), bench.tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n")]
    assert len(rows[0]) != len(rows[1])
    budget = 4
    pol = latent.LatentHead(T, think_close_token_id=CLOSE, max_internal_tokens=budget, pairing=pairing)
    traces = latent.run(bench, rows, pol, max_new_tokens=1, chat=False, readout=False)
    other = "next" if pairing == "same" else "same"
    for ids, tr in zip(rows, traces):
        lats, toks = _reference_latents(hf, ids, T, pairing, CLOSE, budget)
        assert tr.latent_steps == len(lats) >= 2
        assert [s.head_token for s in tr.steps] == toks
        for s, ref in zip(tr.steps, lats):
            assert torch.allclose(s.latent, ref.float(), atol=1e-5, rtol=1e-4), (s.index, float((s.latent - ref).abs().max()))
        alt, _ = _reference_latents(hf, ids, T, other, CLOSE, 1)
        assert not torch.allclose(tr.steps[0].latent, alt[0], atol=1e-3)


@pytest.mark.parametrize("pairing", ["same", "next"])
def test_training_stepper_pairs_as_the_engine(qwen_tiny, pairing):
    """The recipe's uncached stepper feeds the engine's latents under either pairing
    (batched, left-padded prompts)."""
    from workbench.train.latent_recipes import latent_head_stepper, unroll

    bench, hf = qwen_tiny, qwen_tiny.hf
    T = random_latent_head_tensors(hf, seed=5, scale=0.1)
    rows = [bench.tokenizer.encode(PROMPT_IDS), bench.tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n")]
    spec = latent.LatentHead(T, think_close_token_id=0, max_internal_tokens=3, pairing=pairing)  # token 0: never the argmax here
    head = spec.module(bench)
    with torch.no_grad():
        u = unroll(hf, rows, 3, latent_head_stepper(head, hf, rows, pairing), [[1], [1]])
    traces = latent.run(bench, rows, spec, max_new_tokens=1, chat=False, readout=False)
    for i, tr in enumerate(traces):
        assert tr.latent_steps == 3
        for j in range(3):
            assert torch.allclose(tr.steps[j].latent, u.latents[j][i].float(), atol=1e-4), (i, j)


def test_recipe_starts_passthrough_and_writes_its_pairing(micro_dir, tmp_path):
    import workbench as wb
    from workbench.train.latent_recipes import LatentHeadConfig, run_latent_head

    assert (LatentHeadConfig().pairing, LatentHeadConfig().head_init) == ("same", "passthrough")
    with pytest.raises(ValueError, match="pairing must be"):
        LatentHeadConfig(pairing="prev")
    with pytest.raises(ValueError, match="head_init must be"):
        LatentHeadConfig(head_init="zeros")
    bench = wb.load(str(micro_dir), device="cpu")
    cfg = LatentHeadConfig(model=str(micro_dir), out_dir=str(tmp_path / "l"), pairing="next", n_train=8, eval_n=0, steps=1, batch_size=4, progress=False, device="cpu")
    res = run_latent_head(cfg, bench=bench)
    assert res["status"] == "done" and res["head_init"] == "passthrough" and res["pairing"] == "next"
    written = json.loads((tmp_path / "l" / "final" / "adapter_config.json").read_text())
    assert written["pairing"] == "next"
    spec, _ = latent.load_policy(res["final"])
    assert spec.pairing == "next"


def test_resuming_a_checkpoint_from_before_the_pairing_setting_needs_next(tmp_path):
    from workbench.errors import InputError
    from workbench.train.latent_recipes import LatentHeadConfig, run_latent_head

    ck = tmp_path / "l" / "checkpoint"
    ck.mkdir(parents=True)
    (ck / "config.json").write_text(json.dumps({"recipe": "latent-head", "steps": 2}))
    with pytest.raises(InputError, match="trained with pairing 'next'.*resume it with pairing='next', not 'same'"):
        run_latent_head(LatentHeadConfig(out_dir=str(tmp_path / "l"), progress=False), resume=True, bench=object())
