"""nnsight remote execution, offline: the request path (serialize -> deserialize -> run)
through nnsight's local simulation gives exactly the local numbers, edits included; a
remote=True trace builds an NDIF request for the model without touching the network."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.edits import AddVector
from workbench.trace import run_with_edits


def test_local_simulation_equals_local_capture(any_bench):
    prompts = ["Hello there", "Hi"]
    layers = [1, any_bench.arch.n_layers - 1]
    a = wb.capture(any_bench, prompts, layers=layers, want_logits=True)
    r = wb.capture(any_bench, prompts, layers=layers, want_logits=True, remote="local")
    for l in layers:
        assert torch.equal(a[l], r[l])
    assert torch.equal(a.logits, r.logits)


def test_local_simulation_applies_edits(qwen_tiny):
    v = torch.randn(qwen_tiny.arch.d_model)
    edits = [AddVector(2, v, 3.0)]
    x = run_with_edits(qwen_tiny, ["Hello"], edits, layers=[3])
    y = run_with_edits(qwen_tiny, ["Hello"], edits, layers=[3], remote="local")
    plain = run_with_edits(qwen_tiny, ["Hello"], [], layers=[3])
    assert torch.equal(x.logits, y.logits) and torch.equal(x[3], y[3])
    assert not torch.allclose(plain[3], y[3])  # the edit really ran on the simulated path


def test_remote_true_sends_an_ndif_request_for_the_model(qwen_tiny, monkeypatch):
    from nnsight.intervention.backends import remote as rb
    from nnsight.modeling import huggingface

    sent = {}

    def fake_request(self, request, tracer):
        sent["key"] = request.model_key
        sent["blob"] = self._serialize(tracer)  # the real serialization of the trace
        raise rb.RemoteError("offline test: not sent")

    monkeypatch.setattr(rb.RemoteBackend, "request", fake_request)
    # the hub lookup that canonicalises the repo id, answered without a network
    name = "workbench/qwen3.5-tiny"
    monkeypatch.setattr(qwen_tiny.model, "repo_id", name, raising=False)
    monkeypatch.setitem(huggingface._ID_CACHE, name, name)
    with pytest.raises(rb.RemoteError, match="offline test"):
        wb.capture(qwen_tiny, ["Hello"], layers=[1], remote=True)
    assert isinstance(sent["blob"], bytes) and len(sent["blob"]) > 100
    assert sent["key"].startswith("nnsight.modeling.transformers.TransformersModel:")
    assert '"repo_id": "workbench/qwen3.5-tiny"' in sent["key"] and '"task": "text-generation"' in sent["key"]


def test_ndif_offline_is_a_clear_error():
    from workbench.remote import ndif

    with pytest.raises(ValueError, match="hub id"):
        ndif("not-a-hub-id")
    with pytest.raises(ValueError, match="needs network access"):
        ndif("no-such-owner-xyz/no-such-model-xyz")
