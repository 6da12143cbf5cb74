"""The micro model and the latent-reasoning recipes: exact full-vocabulary loss, the
expanded checkpoint, held-out data, and every recipe end to end on a smoke-size micro
model, with the latents the trainer feeds checked against the latent engine's."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench import latent
from workbench.train import arith
from workbench.train.latent_recipes import (
    CoconutConfig,
    LatentHeadConfig,
    PauseConfig,
    ProjectionConfig,
    run_coconut,
    run_latent_head,
    run_pause,
    latent_head_stepper,
    run_projection,
    unroll,
)
from workbench.train.micro import MicroConfig, build_data, compact_model, expand

from conftest import MICRO_SMOKE as SMOKE

RECIPE = dict(n_train=24, eval_n=0, steps=2, batch_size=4, progress=False, device="cpu")


@pytest.fixture(scope="module")
def micro(micro_dir):
    return wb.load(str(micro_dir), device="cpu")


# --------------------------------------------------------------------------- exact pieces


def test_restricted_ce_is_the_full_vocabulary_loss():
    torch.manual_seed(0)
    V, d, U = 50, 8, 12
    W = torch.zeros(V, d)
    used = torch.randperm(V)[:U].sort().values
    W[used] = torch.randn(U, d)
    h = torch.randn(20, d)
    tgt_full = used[torch.randint(0, U, (20,))]
    full = F.cross_entropy(h @ W.t(), tgt_full)
    local = torch.searchsorted(used, tgt_full)
    assert torch.allclose(arith.restricted_ce(h, local, W[used], V - U), full, atol=1e-5)

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(V, d)
            self.emb.weight.data = W.clone()
            self.out = torch.nn.Linear(d, V, bias=False)
            self.out.weight = self.emb.weight

        def get_input_embeddings(self):
            return self.emb

        def get_output_embeddings(self):
            return self.out

    view = arith.VocabView(Tied())
    assert view.size == U
    assert torch.allclose(view.ce(h, tgt_full), full, atol=1e-5)
    lp = torch.log_softmax(h @ W.t(), -1)[:, int(used[3])]
    assert torch.allclose(view.logprob(h, int(used[3])), lp, atol=1e-5)
    with pytest.raises(ValueError, match="all-zero unembedding"):
        view.ce(h[:1], torch.tensor([int(next(i for i in range(V) if i not in set(used.tolist())))]))


def test_expanded_micro_model_equals_the_compact_one(tmp_path):
    from workbench.tokenizers import qwen35_tokenizer

    cfg = MicroConfig(out_dir=str(tmp_path), **{**SMOKE, "n_train": 64})
    data = build_data(qwen35_tokenizer(), cfg)
    compact = compact_model(cfg, len(data.vocab)).eval()
    full = expand(compact, data.vocab, cfg).eval()
    ids_c, n_prompt = data.examples[0]
    ids_f = data.vocab[ids_c]
    with torch.no_grad():
        lc = compact(input_ids=ids_c[None]).logits[0]
        lf = full(input_ids=ids_f[None]).logits[0]
    assert torch.allclose(lf[:, data.vocab], lc, atol=1e-5)
    others = torch.ones(lf.shape[-1], dtype=torch.bool)
    others[data.vocab] = False
    assert float(lf[:, others].abs().max()) == 0.0
    # the training loss (restricted) is the saved model's full-vocabulary loss
    h = compact.model(input_ids=ids_c[None]).last_hidden_state[0]
    restricted = arith.restricted_ce(h[n_prompt - 1 : -1], ids_c[n_prompt:], compact.get_output_embeddings().weight, lf.shape[-1] - len(data.vocab))
    assert torch.allclose(restricted, F.cross_entropy(lf[n_prompt - 1 : -1], ids_f[n_prompt:]), atol=1e-5)


def test_training_problems_never_contain_held_out_questions():
    held = {p.question for name in arith.EVAL_SETS for p in arith.eval_problems(name, 512)}
    train = arith.training_problems(3000, 1, 4, 1, seed=1000)
    assert len(train) == 3000
    assert not held & {p.question for p in train}
    with pytest.raises(ValueError, match="unknown eval set"):
        arith.eval_problems("9 steps", 4)


def test_encoding_layout_matches_the_chat_template():
    from workbench.tokenizers import qwen35_tokenizer

    tok = qwen35_tokenizer()
    p = arith.eval_problems("3 steps", 1)[0]
    e = arith.encode_problems(tok, [p])[0]
    ids, n = e.cot()
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>user\n" + p.question) and tok.decode(ids[:n]).endswith("<think>\n")
    assert text.endswith("\n".join(p.steps) + f"\n</think>\n\n#### {p.answer}<|im_end|>")
    assert len(e.steps) == 3 and all(tok.decode(s).endswith("\n") for s in e.steps)
    d_ids, dn = e.direct()
    assert tok.decode(d_ids[:dn]).endswith("<think>\n\n</think>\n\n") and tok.decode(d_ids[dn:]) == f"#### {p.answer}<|im_end|>"


def test_micro_model_loads_as_a_stock_checkpoint(micro_dir, micro):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(micro_dir)
    assert type(hf).__name__ == "Qwen3_5ForCausalLM"
    info = json.loads((micro_dir / "micro.json").read_text())
    assert set(info["eval"]) == set(arith.EVAL_SETS) and info["compact_vocab"] < 1000
    assert (micro_dir / "metrics.jsonl").read_text().count("\n") == SMOKE["steps"]
    W = micro.hf.get_input_embeddings().weight
    assert int((W != 0).any(-1).sum()) == info["compact_vocab"]


def test_micro_config_rejects_bad_values():
    with pytest.raises(ValueError, match="layer_types"):
        MicroConfig(layer_types=["mamba"])
    with pytest.raises(ValueError, match="divisible"):
        MicroConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="from scratch"):
        MicroConfig(lora_rank=4)


# --------------------------------------------------------------------------- trainer == engine


def _prompt_ids(bench, problem):
    return arith.encode_problems(bench.tokenizer, [problem])[0].prompt


def test_coconut_latents_in_training_are_the_engine_latents(micro):
    p = arith.eval_problems("2 steps", 2)
    rows = [_prompt_ids(micro, q) for q in p]
    with torch.no_grad():
        u = unroll(micro.hf, rows, 3, lambda j, h, m: h[:, -1], [[1, 2]] * 2)
    traces = latent.run(micro, rows, latent.Coconut(steps=3, end="</think>"), max_new_tokens=1, readout=False)
    for i, tr in enumerate(traces):
        for j in range(3):
            assert torch.allclose(tr.steps[j].latent, u.latents[j][i].float(), atol=1e-4), (i, j)


def test_recipes_train_and_save_what_the_engine_loads(micro_dir, micro, tmp_path):
    model = str(micro_dir)
    runs = {
        "coconut": run_coconut(CoconutConfig(model=model, out_dir=str(tmp_path / "c"), max_reasoning_steps=2, thoughts_per_step=1, stage_eval_n=0, **RECIPE)),
        "projection-head": run_projection(ProjectionConfig(model=model, out_dir=str(tmp_path / "p"), latent_steps=2, **RECIPE)),
        "latent-head": run_latent_head(LatentHeadConfig(model=model, out_dir=str(tmp_path / "l"), max_internal_tokens=6, **RECIPE)),
        "pause": run_pause(PauseConfig(model=model, out_dir=str(tmp_path / "s"), n_pause=2, **RECIPE)),
    }
    for name, res in runs.items():
        assert res["status"] == "done", name
        spec, base = latent.load_policy(res["final"])
        bench = wb.load(base, device="cpu")
        tr = latent.run(bench, "Ava has 3 apples. How many apples does Ava have now?", spec, max_new_tokens=4, readout=False)
        assert tr.latent_steps >= 1, name
    # coconut: one fresh optimizer per stage, two stages, its model a stock checkpoint
    for k in (1, 2):
        ck = wb.train.read_checkpoint(tmp_path / "c" / f"stage{k}" / "checkpoint")
        assert ck.step == RECIPE["steps"]
    assert [s["latents"] for s in runs["coconut"]["stages"]] == [1, 2]
    spec, _ = latent.load_policy(runs["coconut"]["final"])
    assert spec.steps == 2 and spec.end == "</think>"
    # the latent head file is the adapter format with its config
    cfg = json.loads((tmp_path / "l" / "final" / "adapter_config.json").read_text())
    assert cfg["think_close_token_id"] == 248069 and cfg["max_internal_tokens"] == 6
    spec, _ = latent.load_policy(runs["pause"]["final"])
    assert isinstance(spec, latent.PauseTokens) and spec.count == 2
    assert spec.end is None  # pause tokens before CoT: nothing forced after the pauses (a file without metadata loads as before)


def test_latent_head_latents_in_training_are_the_engine_latents(micro, tmp_path):
    from workbench.latent.heads import random_latent_head_tensors

    tensors = random_latent_head_tensors(micro.hf, seed=3, scale=0.05)
    spec = latent.LatentHead(tensors, think_close_token_id=248069, max_internal_tokens=3)
    head = spec.module(micro)
    p = arith.eval_problems("3 steps", 1)[0]
    rows = [_prompt_ids(micro, p)]
    nxt = latent_head_stepper(head, micro.hf, rows)
    with torch.no_grad():
        u = unroll(micro.hf, rows, 3, nxt, [[1]])
    tr = latent.run(micro, rows[0], spec, max_new_tokens=1, readout=False)
    for j in range(min(3, tr.latent_steps)):
        assert torch.allclose(tr.steps[j].latent, u.latents[j][0].float(), atol=1e-4), j


def test_recipe_bad_input(micro_dir, smol, tmp_path):
    with pytest.raises(ValueError, match="frozen base"):
        LatentHeadConfig(train_modules=["."])
    with pytest.raises(ValueError, match="targets"):
        PauseConfig(targets="teacher")
    with pytest.raises(ValueError, match="</think>"):
        run_latent_head(LatentHeadConfig(out_dir=str(tmp_path / "x"), **RECIPE), bench=smol)
    with pytest.raises(ValueError, match="no latent_policy.json"):
        latent.load_policy(str(tmp_path))
    (tmp_path / "latent_policy.json").write_text('{"method": "coconut"}')
    with pytest.raises(ValueError, match="needs 'steps', a positive integer; got None"):
        latent.load_policy(str(tmp_path))
    (tmp_path / "latent_policy.json").write_text("[1]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        latent.load_policy(str(tmp_path))
    from workbench.latent.results import results

    with pytest.raises(ValueError, match=r"unknown recipe\(s\) \['cocnut'\]"):
        results(tmp_path / "r", recipes=("cocnut",))
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="empty|n_train"):
        CoconutConfig(n_train=0)


def test_recipes_on_a_model_without_a_thinking_block(smol, tmp_path):
    """SmolLM2 has no </think>: COCONUT latents sit between the prompt and the answer (no end
    marker), trained through LoRA and merged; what it saves runs in the engine."""
    p = arith.eval_problems("2 steps", 1)[0]
    e = arith.encode_problems(smol.tokenizer, [p])[0]
    assert "<think>" not in smol.tokenizer.decode(e.prompt) and smol.tokenizer.decode(e.suffix).startswith("#### ")
    bench = wb.load("smollm2-135m", device="cpu")  # its own copy: the recipe fine-tunes (and merges into) it
    cfg = CoconutConfig(model="smollm2-135m", out_dir=str(tmp_path / "c"), max_reasoning_steps=1, thoughts_per_step=1, lora_rank=4, lora_targets=["q_proj", "v_proj"],
                        train_modules=[], stage_eval_n=0, probe_n=0, **{**RECIPE, "steps": 1, "n_train": 4, "batch_size": 2})  # fmt: skip
    res = run_coconut(cfg, bench=bench)
    spec, model = latent.load_policy(res["final"])
    assert spec.end is None and spec.steps == 1 and model.endswith("model")
    tr = latent.run(wb.load(model, device="cpu"), p.question, spec, max_new_tokens=2, readout=False)
    assert tr.latent_steps == 1 and tr.exit == "fixed"


def test_coconut_stages_see_different_problems(micro_dir, tmp_path, monkeypatch):
    """Each stage draws its own data order. With one seed every stage started at step 0 of
    the same permutation: 120 steps x batch 16 meant the same 1,920 of 4,000 problems, in the
    same order, at every stage (the original reshuffles the whole set every epoch)."""
    from workbench.train import latent_recipes as lr
    from workbench.train.loop import batch_indices

    seen = []
    real_train = lr.train

    def spy(model, data, loss_fn, cfg, **kw):
        seen.append((cfg.seed, [i for s in range(cfg.steps) for i in batch_indices(len(data), s, 0, cfg)]))
        return real_train(model, data, loss_fn, cfg, **kw)

    monkeypatch.setattr(lr, "train", spy)
    cfg = CoconutConfig(model=str(micro_dir), out_dir=str(tmp_path / "c"), max_reasoning_steps=3, stage_eval_n=0, probe_n=0, **RECIPE)
    assert run_coconut(cfg)["status"] == "done"
    assert [s for s, _ in seen] == [lr.coconut_stage_seed(cfg.seed, k) for k in (1, 2, 3)]
    assert len({s for s, _ in seen}) == 3
    orders = [tuple(o) for _, o in seen]
    assert len(set(orders)) == 3, "every stage trained on the same examples in the same order"
    # resuming a stage uses that stage's seed again: the order is a function of (stage seed, step)
    again = lr.coconut_stage_seed(cfg.seed, 2)
    assert again == seen[1][0]


def test_coconut_defaults_are_the_papers():
    """c = 2 on arithmetic (GSM8k's setting), 1 with 6 stages on the graph task (ProsQA's),
    3 epochs per stage unless steps are given, the optimizer fresh at every stage."""
    a = CoconutConfig(n_train=4000, batch_size=16)
    assert (a.c, a.stages, a.steps_per_stage) == (2, a.max_reasoning_steps, 750)
    assert CoconutConfig(steps=5).steps_per_stage == 5 and CoconutConfig(thoughts_per_step=3).c == 3
    if "task" in CoconutConfig.__dataclass_fields__:
        g = CoconutConfig(task="graph")
        assert (g.c, g.stages) == (1, 6)
    with pytest.raises(ValueError, match="epochs_per_stage"):
        CoconutConfig(epochs_per_stage=0.0)
    with pytest.raises(ValueError, match="steps"):
        CoconutConfig(steps=-1)
