"""TransformerLens TransformerBridge over the workbench's weights: cached residuals equal
`workbench.capture`.

Tolerances: with the workbench model switched to eager attention (what the bridge runs),
every layer matches to 1e-6 x the layer's max |residual| (observed: bit-identical). With the
workbench's default SDPA attention, to 1e-5 x the layer's max |residual| (observed <= 6e-7:
kernel-level reordering; SmolLM2's residuals reach ~2e4 from massive activations).
"""

from __future__ import annotations

import torch

import workbench as wb
from workbench.arch import decoder_layers
from workbench.inputs import token_ids
from workbench.interop import transformer_lens_bridge
from workbench.sinks import attention_implementation

PROMPTS = ["The capital of France is Paris, and the capital of Italy is"]


def _check(bench, bridge, rel):
    ids = torch.tensor(token_ids(bench.tokenizer, PROMPTS))
    _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
    acts = wb.capture(bench, PROMPTS, positions="all")
    for l in range(bench.arch.n_layers):
        ref = cache[f"blocks.{l}.hook_resid_post"][0].float()
        scale = float(ref.abs().max())
        torch.testing.assert_close(acts[l][0], ref, rtol=0, atol=rel * scale, msg=lambda m: f"layer {l}: {m}")


def test_bridge_residuals_equal_capture(smol):
    before = {n: p.detach().clone() for n, p in list(smol.hf.named_parameters())[:3]}
    impl = smol.hf.config._attn_implementation
    block_type = type(decoder_layers(smol.hf)[0])
    bridge = transformer_lens_bridge(smol)
    # the workbench model is untouched: same attention implementation, blocks and weights
    assert smol.hf.config._attn_implementation == impl
    assert type(decoder_layers(smol.hf)[0]) is block_type
    for n, p in smol.hf.named_parameters():
        if n in before:
            assert torch.equal(p, before[n])
    # ... and the bridge shares its weight tensors
    emb = smol.hf.get_input_embeddings().weight
    assert any(p.data_ptr() == emb.data_ptr() for p in bridge.original_model.parameters())
    _check(smol, bridge, 1e-5)
    with attention_implementation(smol.hf, "eager"):
        _check(smol, bridge, 1e-6)


def test_bridge_on_qwen35(qwen_tiny):
    bridge = transformer_lens_bridge(qwen_tiny)
    with attention_implementation(qwen_tiny.hf, "eager"):
        _check(qwen_tiny, bridge, 1e-6)
