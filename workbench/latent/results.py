"""`workbench latent results`: the README's latent-reasoning results table in one command.

On the Qwen3.5 micro model (trained once per machine): train every latent recipe with its
default config once per seed (`<out>/<task>/<recipe>/seed<s>/`; a finished one is reused,
an interrupted one resumes), then score no-CoT, explicit CoT, soft thinking (training-free)
and each recipe through the latent engine on the held-out sets of every difficulty; a
training path that is not a latent method (`upft`) is scored as explicit CoT on its
fine-tuned model. Every (row, seed, set) cell is written to `<out>/<task>/cells/` as soon
as it is scored, so the command run again picks up where a stopped one left off.

Per cell: the mean over seeds and a 95% interval (Student t over the seeds' accuracies
when a row has >= 2 seeds; a Wilson interval over the problems for a row that is one
deterministic run, the training-free ones); g = (acc - noCoT) / (CoT - noCoT), the share
of the gap between answering directly and explicit CoT a method recovers. A row whose mean
g over the sets is below `NOT_LEARNED_G` (0.3) is labelled "not learned at this budget".
Writes `results.json` and `results.md` (atomic) into `<out>/<task>/`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import InputError, check_writable_target

# (row label, recipe). Each label says what the row measures: "pause tokens before CoT" is
# the pause recipe followed by the model's explicit chain (do pauses leave CoT intact?);
# "pause tokens, no CoT (Goyal)" answers right after the pauses (latent computation in the
# pause positions); "UPFT, then CoT" is the model fine-tuned on its own sampled prefixes,
# scored with explicit CoT (a training path, not a latent method).
RECIPE_ROWS = (
    ("COCONUT", "coconut"), ("projection head", "projection-head"), ("latent head", "latent-head"),
    ("pause tokens before CoT", "pause"), ("pause tokens, no CoT (Goyal)", "pause-answer"), ("UPFT, then CoT", "upft"),
    ("Latent-SFT", "latent-sft"), ("projection head, QThink teacher", "projection-qthink"),
)  # fmt: skip


def row_method(final: str | Path) -> tuple[Any, str]:
    """(what `evaluate` runs, the model it runs on) for a recipe's final folder: what
    `load_policy` reads (a latent policy, or "cot" on the folder's fine-tuned model for a
    training path evaluated with explicit CoT, such as `upft`)."""
    from .policies import load_policy

    return load_policy(str(final))


NOT_LEARNED_G = 0.3
# CoT must beat no-CoT by this much on every set for the table to measure anything: with a
# smaller gap g is noise over a base model that has not learned its task
BASE_MIN_GAP = 0.2
TRAINING_FREE = (("no-CoT", "no_think"), ("CoT", "cot"), ("soft thinking", "soft"))


RUN_CONDITIONS = "results_conditions.json"


def ensure_recipe(recipe: str, out: Path, model: str, retrain: bool = False, overrides: dict | None = None,
                  conditions: dict | None = None) -> tuple[Path, dict]:  # fmt: skip
    """`<out>/final`, training `recipe` there with its default config (plus `overrides`)
    when missing; an interrupted run in `out` resumes. `conditions` (the table's: model,
    its weights, the overrides) are kept in `<out>/results_conditions.json`: a run
    folder trained under other conditions is trained again, never reused or resumed."""
    import shutil

    from ..paths import atomic_write_text
    from ..train.latent_recipes import RUNNERS

    run_dir = out
    final = run_dir / "final"
    marker = run_dir / RUN_CONDITIONS
    if run_dir.exists() and conditions is not None and marker.is_file():
        try:
            same = json.loads(marker.read_text()) == json.loads(json.dumps(conditions, default=str))
        except ValueError:
            same = False
        if not same:
            retrain = True
    if retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    summary_path = final / "train_summary.json"
    if final.is_dir() and summary_path.is_file():
        return final, json.loads(summary_path.read_text())
    if conditions is not None:
        atomic_write_text(marker, json.dumps(conditions, indent=1, default=str) + "\n")
    cls, run = RUNNERS[recipe]
    cfg = cls(model=model, out_dir=str(run_dir), eval_n=0, **(overrides or {}))
    resume = (run_dir / "checkpoint").exists() or any(run_dir.glob("stage*/checkpoint"))  # an interrupted run
    res = run(cfg, resume=resume)
    if res.get("status") != "done":
        raise RuntimeError(f"recipe {recipe} stopped: {res}")
    info = json.loads(summary_path.read_text())
    # from the step log, not this process's clock: a run resumed across sessions counts all of its steps
    info["train_seconds"] = round(logged_train_seconds(run_dir), 1)
    atomic_write_text(summary_path, json.dumps(info, indent=1, default=str) + "\n")
    return final, info


def logged_train_seconds(run_dir: Path) -> float:
    """Seconds of training steps in the trainer's step logs under `run_dir` (every
    `metrics.jsonl`, one per stage of a staged recipe), each step counted once: a step
    logged before an interruption and again after the resume counts its last time. Evals
    and probes between steps are not included."""
    from ..train.loop import METRICS_FILE

    total = 0.0
    for path in sorted(Path(run_dir).rglob(METRICS_FILE)):
        by_step: dict[int, float] = {}
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by an interruption
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and isinstance(row.get("seconds"), (int, float)):
                by_step[row["step"]] = float(row["seconds"])
        total += sum(by_step.values())
    return total


# --------------------------------------------------------------------------- statistics


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of `values` (n >= 2)."""
    import statistics

    from scipy import stats

    n = len(values)
    m = statistics.fmean(values)
    if n < 2:
        raise ValueError("a t interval needs at least 2 values")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / n**0.5
    return m - half, m + half


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials."""
    from scipy import stats

    if n == 0:
        return float("nan"), float("nan")
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def cell_stats(values: list[float], n_problems: int | None = None, binary: bool = False) -> dict[str, Any]:
    """{"mean", "ci95": [lo, hi], "ci": kind} of per-seed values: a t interval over seeds for
    >= 2 seeds; for one run of a proportion (`binary`, with `n_problems`), Wilson over the
    problems; otherwise no interval (None)."""
    import statistics

    m = statistics.fmean(values)
    if len(values) >= 2:
        return {"mean": m, "ci95": list(t_interval(values)), "ci": "t over seeds"}
    if binary and n_problems:
        return {"mean": m, "ci95": list(wilson_interval(round(m * n_problems), n_problems)), "ci": "Wilson over problems"}
    return {"mean": m, "ci95": None, "ci": "one deterministic run"}


def gap_share(acc: float, no_cot: float, cot: float) -> float | None:
    """g = (acc - noCoT) / (CoT - noCoT); None when CoT does not beat no-CoT."""
    if cot - no_cot <= 1e-12:
        return None
    return (acc - no_cot) / (cot - no_cot)


# --------------------------------------------------------------------------- the table


def eval_sets(task: str) -> dict[str, Any]:
    """name -> a function n -> held-out problems, for `task` (its eval sets, easiest first)."""
    from ..train import arith

    return {name: (lambda n, name=name: arith.eval_problems(name, n)) for name in arith.eval_set_names(task)}


DEFAULT_MODELS = {"arith": "qwen3.5-micro", "graph": "qwen3.5-micro-graph"}


def model_fingerprint(model: str) -> str | None:
    """The first 16 hex digits of the sha256 of the model's weights (`model.safetensors`)
    for a micro model (its cache folder, trained there first if missing) or a local model
    folder; None for anything else (a registry model read from a package)."""
    from ..models import MANIFEST, _sha256
    from ..train.micro import MODEL_NAMES, micro_model_dir

    by_name = {v: k for k, v in MODEL_NAMES.items()}
    folder = micro_model_dir(task=by_name[model]) if model in by_name else Path(model).expanduser()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        return None
    try:  # the cache manifest holds it already (verified when the folder was loaded)
        entry = json.loads((folder / MANIFEST).read_text())["files"]["model.safetensors"]
        if entry.get("size") == weights.stat().st_size and entry.get("mtime_ns") == weights.stat().st_mtime_ns:
            return str(entry["sha256"])[:16]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return _sha256(weights)[:16]


def results(
    out_dir: str | Path = "runs/latent-results",
    *,
    task: str = "arith",
    runs_dir: str | Path | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    n: int = 100,
    model: str | None = None,
    retrain: bool = False,
    batch_size: int = 32,
    recipes: tuple[str, ...] | None = None,
    training_free: bool = True,
    overrides: dict[str, dict] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (per seed) and score every row; see the module docstring. `recipes` picks a
    subset of `RECIPE_ROWS`' recipes (None: all), `training_free=False` leaves out the soft
    thinking row (no-CoT and CoT are always scored: g needs them), `overrides` maps a recipe
    to config fields (its `seed` is always the row's seed). `runs_dir` (default `out_dir`)
    holds the trained recipe folders, `out_dir` the cells and the table: with the cells kept
    (e.g. committed) and the runs gone, a (row, seed) whose cells all exist under the same
    conditions is not trained again, so a table spans machines and sessions."""
    from .. import load
    from ..inputs import check_integer
    from ..paths import atomic_write_text
    from .eval import evaluate
    from .policies import SoftThinking

    known = [r for _, r in RECIPE_ROWS]
    if isinstance(recipes, str):  # one name, not its letters
        recipes = (recipes,)
    if recipes is not None and not hasattr(recipes, "__iter__"):
        raise InputError(f"recipes must be a list of recipe names ({', '.join(known)}) or None, got {recipes!r}")
    unknown = [r for r in (recipes or ()) if r not in known]
    if unknown:
        raise InputError(f"unknown recipe(s) {unknown}; valid: {', '.join(known)}")
    if not isinstance(task, str) or task not in DEFAULT_MODELS:
        raise InputError(f"task must be one of {', '.join(DEFAULT_MODELS)}, got {task!r}")
    if isinstance(seeds, int) or not hasattr(seeds, "__iter__"):
        raise InputError(f"seeds must be a list of integers, got {seeds!r}")
    seeds = tuple(check_integer(x, "seeds entry", low=0) for x in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"seeds must be distinct and at least one, got {list(seeds)}")
    n = check_integer(n, "n (problems per set)", low=1)
    batch_size = check_integer(batch_size, "batch_size", low=1)
    check_writable_target(out_dir, "out_dir")
    if runs_dir is not None:
        check_writable_target(runs_dir, "runs_dir")
    if overrides is not None and not isinstance(overrides, dict):
        raise InputError(f"overrides must map recipe names to config fields, got {overrides!r}")
    for r, ov in (overrides or {}).items():
        if r not in known:
            raise InputError(f"overrides name an unknown recipe {r!r}; valid: {', '.join(known)}")
        if not isinstance(ov, dict):
            raise InputError(f"overrides[{r!r}] must be a dict of config fields, got {ov!r}")
        from dataclasses import fields

        from ..train.latent_recipes import RUNNERS

        valid = {f.name for f in fields(RUNNERS[r][0])} - {"model", "out_dir", "seed", "task"}
        bad = sorted(set(ov) - valid)
        if bad:
            raise InputError(f"overrides[{r!r}] names unknown or fixed field(s) {bad}; valid: {', '.join(sorted(valid))}")
    model = model or DEFAULT_MODELS[task]
    sets = eval_sets(task)
    out = Path(out_dir) / task
    runs = Path(runs_dir) / task if runs_dir is not None else out
    out.mkdir(parents=True, exist_ok=True)
    problems = {name: fn(n) for name, fn in sets.items()}
    benches: dict[str, Any] = {}

    def bench_for(m: str):
        if m not in benches:
            benches[m] = load(m, device="cpu")
        return benches[m]

    def cell_path(label: str, seed: int | None, set_name: str) -> Path:
        return out / "cells" / _slug(label) / ("seed-free" if seed is None else f"seed{seed}") / f"{_slug(set_name)}.json"

    weights = model_fingerprint(model)

    def conditions(recipe: str | None, ov: dict | None) -> dict:
        """What a cell's number depends on besides its row, seed and set: a stored cell under
        other conditions is scored again, never mixed into the table. The weights'
        fingerprint matters beside the build version: a micro model rebuilt from the same
        configuration on another machine (another thread count) is not bit-identical."""
        from ..train.micro import CACHE_KEYS, MODEL_NAMES

        build = {MODEL_NAMES[t]: CACHE_KEYS[t] for t in MODEL_NAMES}.get(model)  # the micro model's build version
        return {"model": model, **({"model_build": build} if build else {}), **({"model_weights": weights} if weights else {}),
                "n": n, "recipe": recipe, "overrides": ov}  # fmt: skip

    def stored(label: str, seed: int | None, set_name: str, cond: dict) -> dict | None:
        path = cell_path(label, seed, set_name)
        if retrain or not path.is_file():
            return None
        try:
            c = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # unreadable: score it again (the write is atomic, so this is foreign damage)
        return c if isinstance(c, dict) and c.get("conditions", cond) == cond else None

    def cell(label: str, seed: int | None, set_name: str, make, cond: dict, train: dict) -> dict:
        """One scored cell, read back when a previous run wrote it under the same conditions."""
        have = stored(label, seed, set_name, cond)
        if have is not None:
            return have
        bench, method = make()
        _, summary = evaluate(bench, {label: method}, problems[set_name], batch_size=batch_size, progress=progress)
        s = asdict(summary[0])
        s["thinking_positions"] = s["latent_positions"] + s["think_steps"]
        s["conditions"] = cond
        s.update(train)  # train_seconds, and a staged recipe's per-stage record (COCONUT's curve)
        path = cell_path(label, seed, set_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(s, indent=1, default=str) + "\n")
        return s

    # (label, recipe or None, [(seed, make, train_seconds, conditions)])
    plan: list[tuple[str, str | None, list]] = []
    for label, method in TRAINING_FREE:
        if method == "soft" and not training_free:
            continue
        spec = SoftThinking(max_steps=64) if method == "soft" else method
        plan.append((label, None, [(None, lambda spec=spec: (bench_for(model), spec), {}, conditions(None, None))]))
    for label, recipe in RECIPE_ROWS:
        if recipes is not None and recipe not in recipes:
            continue
        entries = []
        for seed in seeds:
            ov = {**((overrides or {}).get(recipe) or {}), "seed": seed}
            if task != "arith":
                ov.setdefault("task", task)
            cond = conditions(recipe, ov)
            have = [stored(label, seed, name, cond) for name in sets]
            if all(c is not None for c in have):  # scored before (maybe on another machine): no training
                entries.append((seed, None, {k: have[0].get(k) for k in ("train_seconds", "train_stages")}, cond))
                continue
            final, info = ensure_recipe(recipe, runs / recipe / f"seed{seed}", model, retrain, ov, conditions=cond)

            def make(final=final):
                spec, m = row_method(final)
                return bench_for(m or model), spec

            entries.append((seed, make, {"train_seconds": info.get("train_seconds"), "train_stages": info.get("stages")}, cond))
            if progress:
                print(f"[results] {task} {recipe} seed {seed}: trained ({info.get('train_seconds')} s)", flush=True)
        plan.append((label, recipe, entries))

    table: list[dict[str, Any]] = []
    for label, recipe, entries in plan:
        per_set = {name: [cell(label, seed, name, make, cond, t) for seed, make, t, cond in entries] for name in sets}
        train_s = [t["train_seconds"] for _, _, t, _ in entries if t.get("train_seconds") is not None]
        stages = {seed: t["train_stages"] for seed, _, t, _ in entries if t.get("train_stages")}
        table.append({
            "task": task, "method": label, "recipe": recipe, "n_seeds": len(entries),
            "seeds": [seed for seed, _, _, _ in entries if seed is not None],
            "accuracy": {k: cell_stats([c["accuracy"] for c in v], n, binary=True) for k, v in per_set.items()},
            "thinking_positions": {k: cell_stats([c["thinking_positions"] for c in v]) for k, v in per_set.items()},
            "visible_tokens": {k: cell_stats([c["visible_tokens"] for c in v]) for k, v in per_set.items()},
            "self_exit_rate": {k: cell_stats([c["self_exit_rate"] for c in v]) for k, v in per_set.items()},
            "train_seconds": (sum(train_s) / len(train_s)) if train_s else None,
            **({"stages": stages} if stages else {}),
            "overrides": ({k: v for k, v in entries[0][3]["overrides"].items() if k != "seed"} if recipe else None),
        })  # fmt: skip
    base = {r["method"]: r for r in table}
    for r in table:
        g = {k: gap_share(r["accuracy"][k]["mean"], base["no-CoT"]["accuracy"][k]["mean"], base["CoT"]["accuracy"][k]["mean"]) for k in sets}
        vals = [v for v in g.values() if v is not None]
        r["g"] = {**g, "mean": (sum(vals) / len(vals)) if vals else None}
        if r["method"] in ("no-CoT", "CoT"):
            r["status"] = "baseline"
        else:
            r["status"] = "not learned at this budget" if r["g"]["mean"] is None or r["g"]["mean"] < NOT_LEARNED_G else "learned"
    # the table means something only if the base model learned its task with CoT
    gaps = [base["CoT"]["accuracy"][k]["mean"] - base["no-CoT"]["accuracy"][k]["mean"] for k in sets]
    base_ok = bool(gaps) and min(gaps) >= BASE_MIN_GAP
    if not base_ok and progress:
        print(f"[results] warning: CoT beats no-CoT by {', '.join(f'{g:+.2f}' for g in gaps)} on {', '.join(sets)} (needs >= {BASE_MIN_GAP} "
              f"on every set): the base model {model!r} has not learned the task; no latent row can be read as a method result", flush=True)
    report = {
        "task": task, "model": model, "base_model_learned": base_ok, "base_min_gap": BASE_MIN_GAP, "n_per_set": n, "seeds": list(seeds), "sets": list(sets), "not_learned_below_g": NOT_LEARNED_G,
        "rows": table,
    }  # fmt: skip
    atomic_write_text(out / "results.json", json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(out / "results.md", markdown(report) + "\n")
    return report


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def _fmt_ci(c: dict, fmt: str = "{:.2f}") -> str:
    if c["ci95"] is None:
        return fmt.format(c["mean"])
    lo, hi = c["ci95"]
    return f"{fmt.format(c['mean'])} [{fmt.format(lo)}, {fmt.format(hi)}]"


def stage_markdown(row: dict[str, Any], sets: list[str]) -> str:
    """A staged recipe's curve (COCONUT): per stage, latents, final training loss and
    held-out accuracy after the stage (mean over seeds; the stage's own small eval)."""
    import statistics

    per_seed = list(row["stages"].values())
    lines = [f"{row['method']} per stage (mean over {len(per_seed)} seed(s); accuracy after each stage on its own small eval):", "",
             "| stage | latents | final loss | " + " | ".join(f"acc {s}" for s in sets) + " |", "|---:|---:|---:|" + "---:|" * len(sets)]
    for i, st in enumerate(per_seed[0]):
        same = [p[i] for p in per_seed if len(p) > i]
        loss = [x["final_loss"] for x in same if isinstance(x.get("final_loss"), (int, float))]
        accs = []
        for s in sets:
            v = [x["eval"][s] for x in same if isinstance(x.get("eval"), dict) and s in x["eval"]]
            accs.append(f"{statistics.fmean(v):.2f}" if v else "–")
        lines.append(f"| {st['stage']} | {st['latents']} | {statistics.fmean(loss):.3f} | " + " | ".join(accs) + " |" if loss else
                     f"| {st['stage']} | {st['latents']} | – | " + " | ".join(accs) + " |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    sets = report["sets"]
    head = "| method | seeds | " + " | ".join(f"acc {s}" for s in sets) + " | g | thinking positions | visible tokens | train time |"
    sep = "|---|---:|" + "---:|" * (len(sets) + 4)
    lines = [head, sep]
    if report.get("base_model_learned") is False:
        lines = [f"**Base model not trained for the task:** CoT does not beat no-CoT by {report.get('base_min_gap')} on every set, "
                 "so no latent row below is a method result.", "", head, sep]
    for r in report["rows"]:
        accs = " | ".join(_fmt_ci(r["accuracy"][s]) for s in sets)
        gs = " / ".join("–" if r["g"][s] is None else f"{r['g'][s]:.2f}" for s in sets)
        pos = " / ".join(f"{r['thinking_positions'][s]['mean']:.1f}" for s in sets)
        vis = " / ".join(f"{r['visible_tokens'][s]['mean']:.1f}" for s in sets)
        t = r.get("train_seconds")
        name = r["method"] + (" (not learned at this budget)" if r["status"] == "not learned at this budget" else "")
        lines.append(f"| {name} | {r['n_seeds']} | {accs} | {gs} | {pos} | {vis} | {'' if t is None else f'{t / 60:.1f} min'} |")
    lines.append("")
    lines.append(
        f"Task {report['task']}, model {report['model']}, {report['n_per_set']} held-out problems per set, seeds {report['seeds']}. "
        "Accuracy: mean [95% interval] (t over seeds; Wilson over problems for one deterministic run). "
        f"g = (acc - noCoT) / (CoT - noCoT) per set; a row with mean g below {report['not_learned_below_g']} is not reported as a "
        f"method result. Thinking positions and visible tokens are means per set ({' / '.join(sets)}). "
        "Train time: mean per seed of the recipe's logged training-step seconds (evals between steps excluded; "
        "a run resumed across sessions counts every step once)."
    )
    for r in report["rows"]:
        if r.get("stages"):
            lines += ["", stage_markdown(r, sets)]
    changed = [f"{r['recipe']}: " + ", ".join(f"{k}={v}" for k, v in sorted(r["overrides"].items())) for r in report["rows"] if r.get("overrides")]
    if changed:
        lines.append("")
        lines.append("Recipe settings changed from their defaults: " + "; ".join(changed) + ".")
    return "\n".join(lines)


__all__ = [
    "results", "markdown", "ensure_recipe", "model_fingerprint", "logged_train_seconds", "row_method", "RECIPE_ROWS", "TRAINING_FREE", "NOT_LEARNED_G", "cell_stats",
    "t_interval", "wilson_interval", "gap_share", "eval_sets",
]  # fmt: skip
