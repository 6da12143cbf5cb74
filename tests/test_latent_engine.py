"""Invariants of the four latent loops on the one generation loop.

Tolerance: the cached, step-by-step run and one uncached forward over the same
input-embedding sequence agree to ATOL on the last hidden state (float32, CPU; Qwen3.5's
Gated DeltaNet runs its chunked kernel for the uncached forward and the recurrent kernel
for cached steps, which reorders float sums)."""

from __future__ import annotations

import pytest
import torch

from workbench import latent
from workbench.compat import output_cache, with_cache
from workbench.generate import base_model, stop_token_ids
from workbench.latent.heads import random_latent_head_tensors, random_projection_tensors
from workbench.latent.policies import stop_ids

ATOL = 2e-4  # on hidden states whose entries are O(1) after the final norm


def _policies(bench, close_id=None):
    d = bench.arch.d_model
    lh_close = close_id if close_id is not None else (None if "</think>" in bench.tokenizer.get_vocab() else 2)
    pols = {
        "coconut": latent.Coconut(steps=3),
        "projection": latent.ProjectionHead(random_projection_tensors(d, seed=1), steps=3),
        "latent_head": latent.LatentHead(
            random_latent_head_tensors(bench.hf, seed=2), think_close_token_id=lh_close, max_internal_tokens=6, chunk_size=2
        ),
        "soft_thinking": latent.SoftThinking(max_steps=3, top_k=8, cold_patience=0),
    }
    return pols


POLICIES = ["coconut", "projection", "latent_head", "soft_thinking"]
PROMPT = "Tom has 3 apples and buys 4 more. How many?"


@torch.no_grad()
def _uncached_hidden(bench, trace):
    seq = latent.fed_embeddings(bench, trace)[None]
    return base_model(bench.hf)(inputs_embeds=seq, use_cache=False).last_hidden_state[0].float()


@pytest.mark.parametrize("method", POLICIES)
@pytest.mark.parametrize("name", ["qwen_tiny", "smol"])
def test_incremental_equals_full_recomputation(request, name, method):
    bench = request.getfixturevalue(name)
    tr = latent.run(bench, PROMPT, _policies(bench)[method], max_new_tokens=3, readout=False)
    assert tr.latent_steps >= 1
    full = _uncached_hidden(bench, tr)  # positions 0 .. P-1+n_loop-1
    P = len(tr.prompt_ids)
    n = tr.hiddens.shape[0]
    got = full[P - 1 : P - 1 + n]
    assert (got - tr.hiddens).abs().max() < ATOL
    head = bench.hf.get_output_embeddings()
    lg_full, lg_inc = head(got), head(tr.hiddens)
    assert (lg_full - lg_inc).abs().max() < 50 * ATOL
    assert torch.equal(lg_full.argmax(-1), lg_inc.argmax(-1))


@pytest.mark.parametrize("method", POLICIES)
def test_batched_equals_one_by_one(qwen_tiny, method):
    bench = qwen_tiny
    prompts = [PROMPT, "Hi"]
    pol = _policies(bench)[method]
    both = latent.run(bench, prompts, pol, max_new_tokens=4, readout=False)
    for p, b in zip(prompts, both):
        one = latent.run(bench, p, pol, max_new_tokens=4, readout=False)
        assert one.visible_ids == b.visible_ids
        assert (one.exit, one.latent_steps, one.latent_positions) == (b.exit, b.latent_steps, b.latent_positions)
        for s1, s2 in zip(one.steps, b.steps):
            assert torch.allclose(s1.latent, s2.latent, atol=ATOL, rtol=1e-4)


def test_batched_rows_with_different_exit_steps(qwen_tiny):
    """Row 0 self-exits after 1 latent step (its own argmax at step 1 is made the close
    token), row 1 runs to its budget; batched equals one by one."""
    bench = qwen_tiny
    tensors = random_latent_head_tensors(bench.hf, seed=2)
    probe = latent.run(bench, PROMPT, latent.LatentHead(tensors, max_internal_tokens=4), max_new_tokens=2, readout=False)
    close = int(probe.steps[1].top_ids[0])
    pol = latent.LatentHead(tensors, think_close_token_id=close, max_internal_tokens=4)
    prompts = [PROMPT, "Hi"]
    both = latent.run(bench, prompts, pol, max_new_tokens=4, readout=False)
    assert both[0].exit == "self_exit" and both[0].latent_steps == 1
    assert both[1].latent_steps != both[0].latent_steps
    for p, b in zip(prompts, both):
        one = latent.run(bench, p, pol, max_new_tokens=4, readout=False)
        assert one.visible_ids == b.visible_ids and one.exit == b.exit and one.latent_steps == b.latent_steps
        for s1, s2 in zip(one.steps, b.steps):
            assert torch.allclose(s1.latent, s2.latent, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("method", POLICIES)
def test_determinism_and_seeds(qwen_tiny, method):
    bench = qwen_tiny
    pol = _policies(bench)[method]
    a = latent.run(bench, PROMPT, pol, max_new_tokens=6, readout=False)
    b = latent.run(bench, PROMPT, pol, max_new_tokens=6, readout=False)
    assert a.visible_ids == b.visible_ids
    assert all(torch.equal(x.latent, y.latent) for x, y in zip(a.steps, b.steps))
    s1 = latent.run(bench, PROMPT, pol, max_new_tokens=6, temperature=1.0, seed=7, readout=False)
    s2 = latent.run(bench, PROMPT, pol, max_new_tokens=6, temperature=1.0, seed=7, readout=False)
    assert s1.visible_ids == s2.visible_ids
    if method == "coconut":
        s3 = latent.run(bench, PROMPT, pol, max_new_tokens=6, temperature=1.0, seed=8, readout=False)
        assert s1.visible_ids != s3.visible_ids  # near-uniform random model: 6 draws do not all agree


# --------------------------------------------------------------------------- QThink reference


@torch.no_grad()
def _qthink_reference(bench, ids, proj, K, max_new):
    """QThink inference with plain HF calls: prompt forward, K steps of proj(last hidden)
    fed as inputs_embeds with the cache, then greedy decoding from the last step's logits."""
    hf = bench.hf
    stops = stop_ids(bench)
    # the last hidden state after the final norm: the HF model's own last_hidden_state
    bout = base_model(hf)(input_ids=torch.tensor([ids]), use_cache=True)
    h, cache = bout.last_hidden_state[:, -1], output_cache(bout)
    for _ in range(K):
        bout = base_model(hf)(inputs_embeds=proj(h)[:, None], use_cache=True, **with_cache(hf, cache))
        h, cache = bout.last_hidden_state[:, -1], output_cache(bout)
    logits = hf.lm_head(h)
    toks = []
    while len(toks) < max_new:
        t = int(logits.argmax(-1))
        toks.append(t)
        if t in stops:
            break
        out = hf(input_ids=torch.tensor([[t]]), use_cache=True, **with_cache(hf, cache))
        logits, cache = out.logits[:, -1], output_cache(out)
    return toks


def test_projection_head_matches_qthink_reference(any_bench, tmp_path):
    bench = any_bench
    from safetensors.torch import save_file

    tensors = random_projection_tensors(bench.arch.d_model, seed=3)
    torch.save(tensors, tmp_path / "projection_head.pt")
    save_file(tensors, str(tmp_path / "projection_head.safetensors"))
    pol_pt = latent.ProjectionHead.load(str(tmp_path / "projection_head.pt"), steps=4)
    pol_st = latent.ProjectionHead.load(str(tmp_path / "projection_head.safetensors"), steps=4)
    ids = bench.tokenizer.encode("The sum of 12 and 30 is", add_special_tokens=False)
    tr = latent.run(bench, ids, pol_pt, max_new_tokens=8, chat=False, readout=False)
    tr2 = latent.run(bench, ids, pol_st, max_new_tokens=8, chat=False, readout=False)
    ref = _qthink_reference(bench, ids, pol_pt.module(bench), 4, 8)
    assert tr.visible_ids == ref == tr2.visible_ids
    assert tr.exit == "fixed" and tr.latent_steps == 4 and tr.latent_positions == 4


# --------------------------------------------------------------------------- latent-head reference


def _rms(x, w, eps, zero_centred):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y * ((1.0 + w) if zero_centred else w)


@torch.no_grad()
def _latent_head_reference(bench, ids, tensors, close, budget, chunk, max_new):
    """Full recomputation every step (no cache anywhere): base model over the whole
    input-embedding sequence; the head's layer over all head inputs so far."""
    hf = bench.hf
    base = base_model(hf)
    cfg = base.config
    zc = cfg.model_type.startswith("qwen3_5")
    eps = cfg.rms_norm_eps
    emb = hf.get_input_embeddings()
    from workbench.latent.heads import LatentHeadModule

    layer = LatentHeadModule(hf, int(tensors["core.layer.mlp.gate_proj.weight"].shape[0])).core.layer
    layer.load_state_dict({k[len("core.layer.") :]: v for k, v in tensors.items() if k.startswith("core.layer.")})
    T = tensors

    def fuse(e, h):
        x = torch.cat([_rms(e, T["core.pre_fc_norm_embedding.weight"], eps, zc), _rms(h, T["core.pre_fc_norm_hidden.weight"], eps, zc)], -1)
        return x @ T["core.fc.weight"].T

    def head_out(xs):
        x = torch.stack(xs)[None]
        pos = torch.arange(x.shape[1])[None]
        y = layer(x, position_embeddings=base.rotary_emb(x, pos), attention_mask=None, position_ids=pos)
        y = y[0] if isinstance(y, tuple) else y
        return _rms(y[0, -1], T["core.norm.weight"], eps, zc) @ T["to_embed.weight"].T

    seq = list(emb(torch.tensor(ids)))
    hid = base(inputs_embeds=torch.stack(seq)[None], use_cache=False).last_hidden_state[0]
    head_inputs = [fuse(emb(torch.tensor(ids[t + 1])), hid[t]) for t in range(len(ids) - 1)]
    used, lats, exit = 0, [], None
    while True:
        h = base(inputs_embeds=torch.stack(seq)[None], use_cache=False).last_hidden_state[0, -1]
        tok = int(hf.lm_head(h).argmax())
        if tok == close:
            exit = "self_exit"
            break
        if used + chunk > budget:
            exit = "maxed"
            break
        head_inputs.append(fuse(emb(torch.tensor(tok)), h))
        lat = head_out(head_inputs)
        lats.append(lat)
        seq += [lat] * chunk
        used += chunk
    seq.append(emb(torch.tensor(close)))
    stops = stop_ids(bench)
    vis = []
    while len(vis) < max_new:
        h = base(inputs_embeds=torch.stack(seq)[None], use_cache=False).last_hidden_state[0, -1]
        t = int(hf.lm_head(h).argmax())
        vis.append(t)
        if t in stops:
            break
        seq.append(emb(torch.tensor(t)))
    return vis, lats, exit, used


@pytest.mark.parametrize(
    "chunk,budget,exit_at",
    [pytest.param(1, 5, None, marks=pytest.mark.slow), pytest.param(2, 5, None, marks=pytest.mark.slow), (2, 9, 1)],
)
def test_latent_head_matches_uncached_reference(qwen_tiny, tmp_path, chunk, budget, exit_at):
    import json

    from safetensors.torch import save_file

    bench = qwen_tiny
    tensors = random_latent_head_tensors(bench.hf, seed=5, scale=0.1)
    save_file(tensors, str(tmp_path / "latent_head.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"think_close_token_id": 248069, "chunk_size": chunk, "max_internal_tokens": budget, "pairing": "next"}))
    ids = bench.tokenizer.encode("<|im_start|>user\nWhat is 7 times 6?<|im_end|>\n<|im_start|>assistant\n<think>\n")
    pol = latent.LatentHead.load(str(tmp_path))
    assert (pol.chunk_size, pol.max_internal_tokens, pol.think_close_token_id) == (chunk, budget, 248069)
    close = 248069
    if exit_at is not None:  # make the model's own greedy token at step `exit_at` the close token
        probe = latent.run(bench, ids, pol, max_new_tokens=1, chat=False, readout=False)
        close = int(probe.steps[exit_at].top_ids[0]) if exit_at < probe.latent_steps else close
        pol = latent.LatentHead.load(str(tmp_path), think_close_token_id=close)
    tr = latent.run(bench, ids, pol, max_new_tokens=5, chat=False, readout=False)
    vis, lats, exit, used = _latent_head_reference(bench, ids, tensors, close, budget, chunk, 5)
    assert tr.exit == exit and tr.latent_positions == used == tr.latent_steps * chunk
    assert tr.latent_steps == len(lats)
    if exit_at is None:
        assert exit == "maxed" and used == (budget // chunk) * chunk
    else:
        assert exit == "self_exit" and tr.latent_steps == exit_at
    for s, ref in zip(tr.steps, lats):
        assert torch.allclose(s.latent, ref.float(), atol=ATOL, rtol=1e-4)
    assert tr.visible_ids == vis
    assert close not in tr.visible_ids[:1] or vis[:1] == tr.visible_ids[:1]
    # `</think>` is fed as an ordinary (forced) token and is not visible
    assert tr.fed[tr.latent_positions] == ("forced", close)
    assert len(tr.visible_ids) <= 5


def test_latent_head_on_llama_base(smol):
    """The head is built from the base's own decoder-layer class (Llama here)."""
    tensors = random_latent_head_tensors(smol.hf, seed=1)
    pol = latent.LatentHead(tensors, think_close_token_id=2, max_internal_tokens=3)
    tr = latent.run(smol, PROMPT, pol, max_new_tokens=3, readout=False)
    assert type(pol.module(smol).core.layer).__name__ == "LlamaDecoderLayer"
    assert tr.latent_steps >= 1 and tr.exit in ("maxed", "self_exit")


def test_visible_budget_excludes_think_close(qwen_tiny):
    pol = latent.SoftThinking(max_steps=2, cold_patience=0)
    tr = latent.run(qwen_tiny, PROMPT, pol, max_new_tokens=4, readout=False)
    kinds = [k for k, _ in tr.fed]
    assert kinds == ["latent", "latent", "forced", "token", "token", "token", "token"][: len(kinds)]
    assert tr.exit == "maxed" and len(tr.visible_ids) == 4
    assert tr.fed[2] == ("forced", 248069)


def test_coconut_markers_and_self_exit(qwen_tiny):
    pol = latent.Coconut(steps=2, begin="<think>", end="</think>")
    tr = latent.run(qwen_tiny, PROMPT, pol, max_new_tokens=2, readout=False)
    assert [k for k, _ in tr.fed][:4] == ["forced", "latent", "latent", "forced"]
    assert tr.fed[0] == ("forced", 248068) and tr.fed[3] == ("forced", 248069)
    assert tr.exit == "fixed"
    tr2 = latent.run(qwen_tiny, PROMPT, latent.Coconut(steps=2, stop="self_exit"), max_new_tokens=2, readout=False)
    assert tr2.exit == "maxed"  # the random model never prefers </think>


def test_fast_stop_ids_match_the_loop(any_bench):
    assert stop_ids(any_bench) == stop_token_ids(any_bench.tokenizer, any_bench.hf)


def test_stream_yields_each_step_as_produced_and_ends_with_the_run(qwen_tiny):
    bench = qwen_tiny
    pol = _policies(bench)["soft_thinking"]
    updates = list(latent.run_stream(bench, [PROMPT, "Hi"], pol, max_new_tokens=3))
    assert updates[-1].done and all(not u.done for u in updates[:-1])
    traces = updates[-1].traces
    ref = latent.run(bench, [PROMPT, "Hi"], pol, max_new_tokens=3)
    for row in range(2):
        streamed = [s for u in updates[:-1] for i, s in u.new_steps if i == row]
        assert [s.index for s in streamed] == list(range(ref[row].latent_steps))
        assert streamed == traces[row].steps  # the very objects, readout filled in when yielded
        assert all(s.superposition is not None and s.nearest_ids is not None for s in streamed)
        assert traces[row].visible_ids == ref[row].visible_ids
        toks = [t for u in updates[:-1] for i, t in u.tokens if i == row]
        assert toks == ref[row].visible_ids
        for a, b in zip(streamed, ref[row].steps):
            assert torch.equal(a.latent, b.latent) and torch.equal(a.superposition.ids, b.superposition.ids)
    # a latent step is yielded at the loop step that computed it, before any visible token of its row
    first_tok = next(k for k, u in enumerate(updates) if any(i == 0 for i, _ in u.tokens))
    last_lat = max(k for k, u in enumerate(updates) if any(i == 0 for i, _ in u.new_steps))
    assert last_lat < first_tok


def test_one_source_of_stop_ids(qwen_tiny, smol):
    from workbench.generate import stop_token_ids
    from workbench.latent.policies import stop_ids

    for bench in (qwen_tiny, smol):
        assert stop_ids(bench) == stop_token_ids(bench.tokenizer, bench.hf) and stop_ids(bench)
        assert stop_ids(bench) == stop_token_ids(bench.tokenizer, bench.hf)  # the cached copy too
