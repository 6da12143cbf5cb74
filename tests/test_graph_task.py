"""The ProsQA-style graph task: generator determinism and validity (read back from the
question text itself), held-out graphs, string-answer encoding and scoring, the task option
of every recipe's data config, and the micro model trained on it end to end (smoke size)."""

from __future__ import annotations

import json
import re
from collections import deque

import pytest

import workbench as wb
from workbench import tasks
from workbench.errors import InputError
from workbench.tasks import GRAPH_CONCEPTS, GRAPH_PEOPLE, Problem, graph_key, graph_problems, score_answer
from workbench.train import arith

from conftest import MICRO_SMOKE

# smaller than the arithmetic smoke model: a graph prompt is about 1.5x as long
SMOKE = {**MICRO_SMOKE, "n_train": 64, "steps": 3, "batch_size": 4, "eval_n": 2}

_FACT = re.compile(r"(Every )?(\w+) is a (\w+)\.")
_ASK = re.compile(r"Is (\w+) a (\w+) or (\w+)\?$")


def _read(question: str) -> tuple[dict[str, set[str]], str, tuple[str, str], list[tuple[str, str]]]:
    """(edges, person, options, facts) parsed from the question text alone."""
    body, ask = question.rsplit(". ", 1)
    m = _ASK.fullmatch(ask)
    assert m, ask
    facts = [(a, b) for every, a, b in _FACT.findall(body + ".")]
    assert len(facts) == (body + ".").count("."), "every sentence is one fact"
    edges: dict[str, set[str]] = {}
    for a, b in facts:
        edges.setdefault(a, set()).add(b)
    return edges, m.group(1), (m.group(2), m.group(3)), facts


def _reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, deque([start])
    while todo:
        for b in edges.get(todo.popleft(), ()):
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return seen


def _as_tuple(p: Problem):
    return (p.id, p.question, p.answer, p.steps, json.dumps(p.meta, sort_keys=True))


# --------------------------------------------------------------------------- the generator


def test_generator_is_deterministic_per_seed():
    a = graph_problems(40, hops=(2, 6), seed=3)
    assert [_as_tuple(p) for p in a] == [_as_tuple(p) for p in graph_problems(40, hops=(2, 6), seed=3)]
    assert [_as_tuple(p) for p in a[:7]] == [_as_tuple(p) for p in graph_problems(7, hops=(2, 6), seed=3)]  # a prefix
    other = graph_problems(40, hops=(2, 6), seed=4)
    assert len({p.question for p in a} & {p.question for p in other}) == 0
    assert len({p.question for p in a}) == 40
    assert [p.meta["level"] for p in graph_problems(2, level="medium")] == ["medium"] * 2
    assert [_as_tuple(p) for p in tasks.load_task("graph-easy", n=3)] == [_as_tuple(p) for p in graph_problems(3, hops=3, level="easy")]


@pytest.mark.parametrize("hops", [1, 2, 3, 4, 5, 6, 8])
def test_exactly_one_option_is_reachable_and_the_chain_is_a_path(hops):
    for p in graph_problems(60, hops=hops, seed=11):
        edges, person, options, facts = _read(p.question)
        assert person == p.meta["person"] and person in GRAPH_PEOPLE
        reach = _reachable(edges, person)
        assert [o in reach for o in options].count(True) == 1
        assert p.answer in options and p.answer in reach and isinstance(p.answer, str)
        wrong = next(o for o in options if o != p.answer)
        # the wrong option is stated like the answer: each is the object of exactly one fact
        assert [b for _, b in facts].count(wrong) == 1 and [b for _, b in facts].count(p.answer) == 1
        # the chain: one fact of the question per line, each starting where the last ended
        assert len(p.steps) == hops == p.meta["num_steps"]
        assert p.steps[0] == f"{person} is a {p.meta['path'][1]}."
        at = person
        for line in p.steps:
            m = _FACT.fullmatch(line)
            assert m and (m.group(2), m.group(3)) in facts and m.group(2) == at
            assert bool(m.group(1)) == (at != person)  # "Tom is a X." first, then "Every X is a Y."
            at = m.group(3)
        assert at == p.answer
        assert all(c in GRAPH_CONCEPTS for c in {*edges} - set(GRAPH_PEOPLE) | {b for _, b in facts})
        # the person reaches more than the path (dead ends): the first step is a choice
        assert len(edges[person]) >= 2


def test_both_option_orders_and_every_hop_count_in_a_range():
    ps = graph_problems(200, hops=(2, 5), seed=0)
    assert {p.meta["hops"] for p in ps} == {2, 3, 4, 5}
    first = sum(p.meta["options"][0] == p.answer for p in ps) / len(ps)
    assert 0.35 < first < 0.65


def test_concept_names_are_two_tokens_and_people_one():
    from workbench.tokenizers import qwen35_tokenizer

    tok = qwen35_tokenizer()
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    for name in GRAPH_CONCEPTS:
        ids = enc(" " + name)
        assert len(ids) == 2 and tok.decode(ids[1:]) == "pus", name
        for ctx in ("Every {} is a", "Tom is a {}.", "Is Tom a {} or", "a {}?", "#### {}<|im_end|>"):
            assert any(enc(ctx.format(name))[i : i + 2] == ids for i in range(20)), (name, ctx)
    for person in GRAPH_PEOPLE:
        assert len(enc(" " + person)) == 1 and len(enc(person + " is a")) == 3, person
    assert len(set(GRAPH_CONCEPTS)) == len(GRAPH_CONCEPTS) == 64


# --------------------------------------------------------------------------- held-out graphs


def test_held_out_graphs_never_appear_in_training():
    held = [p for name in arith.GRAPH_EVAL_SETS for p in arith.eval_problems(name, 512)]
    assert [p.meta["hops"] for p in arith.eval_problems("4 hops", 5)] == [4] * 5
    train = arith.training_graph_problems(3000, 2, 5, seed=1000)
    assert len(train) == 3000 and {p.meta["hops"] for p in train} == {2, 3, 4, 5}
    assert not {graph_key(p) for p in held} & {graph_key(p) for p in train}
    assert not {p.question for p in held} & {p.question for p in train}
    # the filter itself: drawing from the eval sets' own seed and hop count skips every held-out graph
    same = arith.training_graph_problems(5, 3, 3, seed=arith.EVAL_SEED)
    assert all(p.meta["index"] >= 512 for p in same)
    # graph_key ignores the order the facts are stated in
    p = held[0]
    shuffled = Problem(p.id, p.question, p.answer, p.steps, {**p.meta, "edges": p.meta["edges"][::-1]})
    assert graph_key(shuffled) == graph_key(p)


def test_data_config_follows_the_task():
    cfg = arith.ArithData(task="graph", n_train=50, min_hops=3, max_hops=4)
    ps = cfg.problems(seed=1000)
    assert len(ps) == 50 and {p.meta["hops"] for p in ps} <= {3, 4} and all(p.meta["source"] == "graph" for p in ps)
    assert cfg.eval_set_names() == ["3 hops", "4 hops", "5 hops"] == list(arith.eval_sets_for("graph"))
    assert [p.answer for p in arith.eval_sets_for("graph")["5 hops"](3)] == [p.answer for p in arith.eval_problems("5 hops", 3)]
    # arithmetic is unchanged: the default task, its sets and its training problems
    a = arith.ArithData(n_train=30)
    assert a.task == "arith" and a.eval_set_names() == list(arith.EVAL_SETS)
    assert [x.question for x in a.problems(seed=1000)] == [x.question for x in arith.training_problems(30, 1, 4, 1, seed=1000)]


def test_graph_micro_data_has_a_hop_warmup_and_arithmetic_has_none():
    """The graph micro model's hop curriculum: a quarter of n_train extra 1-2-hop questions
    (outside the held-out sets), alone for the first hop_warmup_steps steps, then mixed in."""
    from workbench.tokenizers import qwen35_tokenizer
    from workbench.train import micro

    tok = qwen35_tokenizer()
    cfg = micro.MicroConfig(task="graph", n_train=40, eval_n=2, hop_warmup_steps=5)
    data = micro.build_data(tok, cfg)
    assert data.n_warmup == 10 and len(data.examples) == 50
    warm = arith.training_graph_problems(10, 1, 2, seed=3000)
    assert {p.meta["hops"] for p in warm} <= {1, 2}
    held = arith._held_out_graphs()
    assert not any(tasks.graph_key(p) in held for p in warm)
    pool = micro.hop_pool(cfg, data)
    assert list(pool(0)) == list(pool(4)) == list(range(40, 50)) and list(pool(5)) == list(range(50))
    # off: no extra questions, no pool; arithmetic never has one
    assert micro.hop_pool(cfg, micro.build_data(tok, cfg.replace(hop_warmup_steps=0))) is None
    a = micro.MicroConfig(n_train=20, eval_n=2)
    ad = micro.build_data(tok, a)
    assert ad.n_warmup == 0 and len(ad.examples) == 20 and micro.hop_pool(a, ad) is None
    for bad in ({"hop_warmup_steps": -1}, {"hop_warmup_max_hops": 0}, {"hop_warmup_n": -3}, {"conv_kernel": 1}, {"conv_kernel": 9}):
        with pytest.raises(InputError, match=next(iter(bad))):
            micro.MicroConfig(task="graph", **bad).validate()


def test_micro_task_defaults():
    from workbench.train import micro

    a, g = micro.MicroConfig(), micro.MicroConfig(task="graph")
    assert (a.conv_kernel, a.steps) == (4, 1400) and (g.conv_kernel, g.steps) == (6, 4000)
    assert micro.MicroConfig(task="graph", steps=12, conv_kernel=4).steps == 12  # given values stay
    assert g.replace(out_dir="x").to_dict() == {**g.to_dict(), "out_dir": "x"}  # resolved once, stored concrete
    assert micro.CACHE_KEYS["graph"] == "qwen3.5-micro-graph-v4"


def test_micro_conv_kernel_sets_the_gated_deltanet_conv_width():
    # the short conv spans "<stem> pus is a <child>" (5 tokens) at conv_kernel >= 5
    from workbench.train import micro

    for k in (4, 6):
        m = micro.compact_model(micro.MicroConfig(task="graph", conv_kernel=k), 50)
        convs = [mod for name, mod in m.named_modules() if name.endswith("linear_attn.conv1d")]
        assert m.config.linear_conv_kernel_dim == k and convs and all(c.weight.shape[-1] == k for c in convs)


# --------------------------------------------------------------------------- string answers


def test_string_answers_are_scored_exactly():
    assert score_answer("Tom is a lerpus.\n</think>\n\n#### zorpus", "zorpus") == ("zorpus", True)
    assert score_answer("#### zorpus  \n", "zorpus") == ("zorpus", True)
    assert score_answer("#### zorpus.", "zorpus") == ("zorpus.", False)  # exact: no punctuation forgiven
    assert score_answer("#### Zorpus", "zorpus")[1] is False
    assert score_answer("#### zorpus or lerpus", "zorpus")[1] is False
    assert score_answer("#### lerpus\n</think>\n#### zorpus", "zorpus")[1] is True  # the answer after </think>
    assert score_answer("zorpus", "zorpus") == (None, False)  # no '####': no answer
    assert score_answer("", "zorpus") == (None, False) and score_answer(None, "zorpus") == (None, False)
    # numbers are scored as they always were (tolerant, last '####', a string holding a number)
    assert score_answer("#### 1,234", 1234) == (1234, True)
    assert score_answer("so the answer is 7.0", 7) == (7, True)
    assert score_answer("#### 12", "#### 12")[1] is True and score_answer("#### 12", "12")[1] is True
    assert score_answer("#### 13", 12) == (13, False)
    assert tasks.is_name_answer("zorpus") and not tasks.is_name_answer("12") and not tasks.is_name_answer(12)


def test_string_answers_encode_and_prompt():
    from workbench.latent.eval import INSTRUCTION, prompt_for
    from workbench.tokenizers import qwen35_tokenizer

    tok = qwen35_tokenizer()
    p = arith.eval_problems("3 hops", 1)[0]
    e = arith.encode_problems(tok, [p])[0]
    ids, n = e.cot()
    text = tok.decode(ids)
    assert text.endswith("<think>\n" + "\n".join(p.steps) + f"\n</think>\n\n#### {p.answer}<|im_end|>")
    assert tok.decode(e.answer) == f"#### {p.answer}<|im_end|>" and len(e.steps) == 3
    assert tasks.format_target(p) == "\n".join(p.steps) + f"\n#### {p.answer}"
    assert "'#### <name>'" in prompt_for(p, "cot") and "'#### <name>'" in prompt_for(p, "no_think")
    q = arith.eval_problems("2 steps", 1)[0]  # arithmetic prompts are what they were
    assert prompt_for(q, "cot") == f"{q.question}\nThink step by step. {INSTRUCTION}"
    assert prompt_for(q, "no_think") == f"{q.question}\nAnswer with only the final number as '#### <number>'."
    assert tok.decode(arith.encode_problems(tok, [q])[0].answer) == f"#### {q.answer}<|im_end|>"
    # the solve-and-grade helper (prefix eval) asks for a name where the answer is one
    from workbench.evaluate import INSTRUCTION as SOLVE, NAME_INSTRUCTION, default_prompt

    assert default_prompt(p) == f"{p.question}\n\n{NAME_INSTRUCTION}" and "name" in NAME_INSTRUCTION
    assert default_prompt(q) == f"{q.question}\n\n{SOLVE}"


def test_answer_index_finds_the_name():
    from workbench.tokenizers import qwen35_tokenizer
    from workbench.train.latent_recipes import answer_index

    tok = qwen35_tokenizer()
    for p in [arith.eval_problems("4 hops", 1)[0], arith.eval_problems("2 steps", 1)[0]]:
        e = arith.encode_problems(tok, [p])[0]
        i = answer_index(e, tok)
        assert tok.decode(e.suffix[:i]).rstrip().endswith("####") and tok.decode(e.suffix[i:]).strip().startswith(str(p.answer)[0])


# --------------------------------------------------------------------------- bad inputs


def test_bad_task_and_difficulty_are_refused():
    from workbench.train.micro import MicroConfig

    for cls in (arith.ArithData, MicroConfig):
        with pytest.raises(InputError, match=r"task must be one of 'arith', 'graph', got 'maze'"):
            cls(task="maze")
    with pytest.raises(InputError, match=r"task must be .*got 3"):
        arith.ArithData(task=3)
    with pytest.raises(InputError, match=r"min_hops <= max_hops <= 8, got 4, 2"):
        arith.ArithData(task="graph", min_hops=4, max_hops=2)
    with pytest.raises(InputError, match=r"unknown eval set '9 hops'; available: .*3 hops, 4 hops, 5 hops"):
        arith.eval_problems("9 hops", 4)
    with pytest.raises(InputError, match=r"unknown graph difficulty level 'insane'; valid: easy, medium, hard"):
        graph_problems(3, level="insane")
    for bad in (0, 9, True, 2.0, (5, 3), (1, 9)):
        with pytest.raises(InputError, match=r"hops must be an integer in 1\.\.8"):
            graph_problems(3, hops=bad)
    with pytest.raises(InputError, match=r"n must be a non-negative integer, got -1"):
        graph_problems(-1)
    with pytest.raises(InputError, match=r"task must be one of 'arith', 'graph', got 'maze'"):
        arith.eval_sets_for("maze")
    with pytest.raises(ValueError, match="unknown task 'graph-insane'"):
        tasks.load_task("graph-insane")


def test_bad_task_on_the_command_line(capsys):
    from workbench.train.recipes import main

    assert main(["micro", "--set", 'task="maze"', "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "task must be one of 'arith', 'graph', got 'maze'" in err and len(err.strip().splitlines()) == 1
    assert main(["coconut", "--set", "task=graph", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "graph"


# --------------------------------------------------------------------------- the micro model on the graph task


@pytest.fixture()
def tmp_cache(tmp_path, monkeypatch):
    """The machine cache of micro models in a temporary folder (the tokenizer cache stays)."""
    from workbench import models
    from workbench.train import micro

    monkeypatch.setattr(micro, "workbench_cache_dir", lambda: tmp_path)
    monkeypatch.setattr(models, "workbench_cache_dir", lambda: tmp_path)
    return tmp_path


def test_micro_graph_model_trains_resumes_loads_and_runs_its_cot_eval(tmp_cache, capsys):
    from workbench.latent.eval import evaluate
    from workbench.train import micro
    from workbench.train.recipes import main

    # a first run stopped after one step leaves a checkpoint in the graph model's own run folder
    cfg = micro.MicroConfig(task="graph", out_dir=str(micro.default_run_dir("graph")), **SMOKE)
    full, info = micro.train_micro(cfg, cancel=lambda: True)
    assert full is None and info == {"status": "cancelled", "step": 1}
    assert (tmp_cache / "qwen3.5-micro-graph-v4.run" / "checkpoint").exists()
    # `workbench train micro --set task=graph` resumes it into the cache folder beside the arithmetic one
    sets = [x for k, v in SMOKE.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    assert main(["micro", "--set", 'task="graph"', *sets]) == 0
    res = json.loads(capsys.readouterr().out)
    folder = tmp_cache / "qwen3.5-micro-graph-v4"
    assert res["model_dir"] == str(folder) and res["steps"] == SMOKE["steps"]
    assert set(res["eval"]) == {"3 hops", "4 hops", "5 hops"}
    assert all(0.0 <= v[k] <= 1.0 for v in res["eval"].values() for k in ("cot", "direct"))
    assert not (tmp_cache / "qwen3.5-micro-graph-v4.run").exists() and not (tmp_cache / micro.CACHE_KEY).exists()
    info = json.loads((folder / "micro.json").read_text())
    assert info["task"] == "graph" and info["config"]["task"] == "graph" and info["compact_vocab"] < 1000
    steps_logged = [json.loads(x)["step"] for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(1, SMOKE["steps"] + 1))  # step 1 from the stopped run, then the resumed ones

    bench = wb.load("qwen3.5-micro-graph", device="cpu")
    assert bench.source == "trained:qwen3.5-micro-graph-v4"
    probs = arith.eval_problems("3 hops", 2)
    rows, summary = evaluate(bench, {"cot": "cot", "no_think": "no_think"}, probs, max_new_tokens=8, think_budget=40, progress=False)
    assert len(rows) == 4 and {s.method for s in summary} == {"cot", "no_think"}
    for r in rows:
        assert isinstance(r.answer, str) and (r.pred is None or isinstance(r.pred, str))
        assert r.correct == (r.pred == r.answer)
    assert "qwen3.5-micro-graph" in wb.available_models()

    # a latent recipe on the graph task: trains on graph problems (the head distils at the
    # name's first token) and its quick eval scores the graph sets
    from workbench.train.latent_recipes import ProjectionConfig, run_projection

    pcfg = ProjectionConfig(model=str(folder), task="graph", out_dir=str(tmp_cache / "proj"), latent_steps=2, n_train=8, eval_n=1, steps=2,
                            batch_size=4, progress=False, device="cpu")  # fmt: skip
    res = run_projection(pcfg)
    assert res["status"] == "done" and set(res["eval"]) == {"3 hops", "4 hops", "5 hops"}
