"""capture(): parity with transformers' hidden states, batching, positions, edits, errors."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.edits import AddVector
from workbench.inputs import encode

PROMPTS = ["The quick brown fox", "Paris is the capital of", "Once upon a time in a land far, far away, there lived"]
TOL = dict(atol=1e-4, rtol=1e-4)  # float32 on CPU; padding changes the summation order only


def _hf_hidden(bench, prompt):
    ids = bench.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = bench.hf(**ids, output_hidden_states=True)
    return out.hidden_states  # [0] = embeddings, [l+1] = output of block l


def test_capture_equals_hf_hidden_states(any_bench):
    layers = [0, 2, any_bench.arch.n_layers - 1]
    acts = wb.capture(any_bench, PROMPTS, layers=layers, positions="all")
    for i, p in enumerate(PROMPTS):
        hs = _hf_hidden(any_bench, p)
        n = hs[0].shape[1]
        assert int(acts.lengths[i]) == n
        for l in layers:
            ref = hs[l + 1][0]
            if l == any_bench.arch.n_layers - 1:
                continue  # HF's last hidden state is after the final norm; the block output is not
            torch.testing.assert_close(acts[l][i, -n:], ref, **TOL)
            assert (acts[l][i, :-n] == 0).all() if n < acts[l].shape[1] else True


def test_last_block_output_through_final_norm_is_hf_last_hidden(any_bench):
    L = any_bench.arch.n_layers - 1
    acts = wb.capture(any_bench, PROMPTS[:1], layers=[L], positions="last")
    hs = _hf_hidden(any_bench, PROMPTS[0])
    from workbench.arch import final_norm

    with torch.no_grad():
        normed = final_norm(any_bench.hf)(acts[L])
    torch.testing.assert_close(normed[0], hs[-1][0, -1], **TOL)


def test_batched_equals_one_by_one(any_bench):
    layers = list(range(any_bench.arch.n_layers))
    batched = wb.capture(any_bench, PROMPTS, layers=layers)
    for i, p in enumerate(PROMPTS):
        single = wb.capture(any_bench, [p], layers=layers)
        for l in layers:
            torch.testing.assert_close(batched[l][i], single[l][0], **TOL)


def test_batch_size_chunks_equal_one_batch(smol):
    a = wb.capture(smol, PROMPTS, layers=[5], positions="all", batch_size=1)
    b = wb.capture(smol, PROMPTS, layers=[5], positions="all", batch_size=8)
    assert a[5].shape == b[5].shape
    torch.testing.assert_close(a[5], b[5], **TOL)


def test_positions(smol):
    all_ = wb.capture(smol, PROMPTS, layers=[4], positions="all")
    h, mask = all_[4], all_.mask
    last = wb.capture(smol, PROMPTS, layers=[4], positions="last")[4]
    first = wb.capture(smol, PROMPTS, layers=[4], positions=0)[4]
    second_last = wb.capture(smol, PROMPTS, layers=[4], positions=-2)[4]
    mean = wb.capture(smol, PROMPTS, layers=[4], positions="mean")[4]
    sl = wb.capture(smol, PROMPTS, layers=[4], positions=slice(1, 3))[4]
    for i in range(len(PROMPTS)):
        real = h[i][mask[i].bool()]
        torch.testing.assert_close(last[i], real[-1], **TOL)
        torch.testing.assert_close(first[i], real[0], **TOL)
        torch.testing.assert_close(second_last[i], real[-2], **TOL)
        torch.testing.assert_close(mean[i], real.mean(0), **TOL)
        torch.testing.assert_close(sl[i], real[1:3].mean(0), **TOL)


def test_default_tokenisation_is_the_tokenizers(smol):
    acts = wb.capture(smol, PROMPTS[:1], layers=[0])
    ids = smol.tokenizer(PROMPTS[0])["input_ids"]
    assert acts.token_ids[0, -len(ids):].tolist() == ids


def test_edit_in_trace_exact(any_bench):
    """Layers before the edit unchanged; the edited layer is original + scale * v."""
    L = 2
    v = torch.randn(any_bench.arch.d_model)
    layers = list(range(any_bench.arch.n_layers))
    base = wb.capture(any_bench, PROMPTS, layers=layers, positions="all")
    edited = wb.capture(any_bench, PROMPTS, layers=layers, positions="all", edits=[AddVector(L, v, 3.0)])
    m = base.mask[..., None].float()
    for l in range(L):
        assert torch.equal(base[l], edited[l])
    torch.testing.assert_close(edited[L], (base[L] + 3.0 * v) * m, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(edited[L + 1], base[L + 1])


def test_run_with_edits_matches_generation_hooks(smol):
    """The trace path and the generation loop's hook path apply the same edit."""
    v = torch.randn(smol.arch.d_model) * 5
    edit = AddVector(7, v, 2.0)
    traced = wb.run_with_edits(smol, PROMPTS[1:2], [edit]).logits
    from workbench.generate import generate_full

    looped = generate_full(smol, PROMPTS[1:2], chat=False, max_new_tokens=1, keep_logits=True, edits=[edit]).steps[0].logits
    torch.testing.assert_close(traced, looped, **TOL)


def test_bad_input(smol):
    with pytest.raises(ValueError, match="out of range"):
        wb.capture(smol, PROMPTS, layers=[30])
    with pytest.raises(ValueError, match="layers is empty"):
        wb.capture(smol, PROMPTS, layers=[])
    with pytest.raises(ValueError, match="empty"):
        wb.capture(smol, [], layers=[1])
    with pytest.raises(ValueError, match="positions"):
        wb.capture(smol, PROMPTS, layers=[1], positions="first")
    with pytest.raises(ValueError, match="context"):
        wb.capture(smol, ["word " * 9000], layers=[1])
    with pytest.raises(ValueError, match="outside"):
        wb.capture(smol, ["Hi"], layers=[1], positions=50)
    with pytest.raises(KeyError, match="captured layers"):
        wb.capture(smol, PROMPTS[:1], layers=[1])[2]


def test_encode_left_pads(smol):
    b = encode(smol, ["a", "a b c d"])
    assert b.attention_mask[0, 0] == 0 and b.attention_mask[0, -1] == 1
    assert b.position_ids[0, -1] == b.lengths[0] - 1
