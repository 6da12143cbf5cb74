"""Cached model load: workbench.load() in a fresh process vs plain transformers from_pretrained."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from ._report import environment

_CODE = r"""
import json, time
t0 = time.perf_counter()
import torch, transformers, nnsight
t1 = time.perf_counter()
if {plain!r}:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from workbench.models import workbench_cache_dir
    folder = workbench_cache_dir() / "smollm2-135m-v1"
    AutoTokenizer.from_pretrained(folder); AutoModelForCausalLM.from_pretrained(folder)
else:
    import workbench as wb
    wb.load({model!r}, device="cpu")
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1}}))
"""


def add_arguments(p) -> None:
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--repeats", type=int, default=5)


def _run(plain: bool, model: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CODE.format(plain=plain, model=model)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    from ..models import load

    load(args.model, device="cpu", dispatch=False)  # build the cache if needed (not timed)
    runs = {"workbench_load": [], "plain_from_pretrained": []}
    for _ in range(args.repeats):
        runs["workbench_load"].append(_run(False, args.model))
        if args.model == "smollm2-135m":
            runs["plain_from_pretrained"].append(_run(True, args.model))
    rows = []
    for k, rs in runs.items():
        if rs:
            rows.append({
                "variant": k,
                "median_load_s": statistics.median(r["load_s"] for r in rs),
                "median_import_s": statistics.median(r["import_s"] for r in rs),
            })
    summary = {"cached_load_s": rows[0]["median_load_s"]}
    if len(rows) > 1:
        summary["ratio_vs_plain_transformers"] = rows[0]["median_load_s"] / rows[1]["median_load_s"]
    summary["target"] = "cached load well under 3 s (import of torch/transformers/nnsight reported separately)"
    return {"benchmark": "load", "environment": environment(), "config": vars(args) | {"func": None}, "rows": rows, "summary": summary}
