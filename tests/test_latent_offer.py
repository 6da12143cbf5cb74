"""What the Latent tab offers first: trained recipe folders when there are some, else one
line saying how to make them (the core decides; the tab shows it)."""

from __future__ import annotations

import json
import os
import time

from workbench.latent.offer import find_recipe_folders, offer


def _policy(folder, method):
    folder.mkdir(parents=True)
    (folder / "latent_policy.json").write_text(json.dumps({"method": method}))
    return folder


def test_recipe_folders_newest_first_latent_only(tmp_path, monkeypatch):
    old = _policy(tmp_path / "runs" / "coconut" / "final", "coconut")
    os.utime(old / "latent_policy.json", (time.time() - 100, time.time() - 100))
    new = _policy(tmp_path / "runs" / "pause" / "final", "pause")
    _policy(tmp_path / "runs" / "upft" / "final", "cot")  # a fine-tuned model, not a latent policy
    _policy(tmp_path / "a" / "b" / "c" / "d" / "e" / "f" / "final", "coconut")  # too deep
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "latent_policy.json").write_text("{not json")
    assert find_recipe_folders([tmp_path, tmp_path / "missing"]) == [new, old]
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))  # no micro model built here
    o = offer([tmp_path])
    assert o.recipe_folders == [new, old] and o.micro_models == [] and str(new) in o.message
    empty = offer([tmp_path / "runs" / "upft"])
    assert empty.recipe_folders == [] and "workbench train micro" in empty.message and "minutes" in empty.message
    (tmp_path / "cache" / "qwen3.5-micro-v2").mkdir(parents=True)
    assert offer([]).micro_models == ["qwen3.5-micro"] and "no latent recipe has been trained" in offer([]).message


def test_latent_tab_opens_on_a_trained_recipe(smol, tmp_path, monkeypatch):
    from apps.app import build_app
    from apps._common import Registry

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    reg = Registry()
    reg.add("smollm2-135m", smol)
    (tmp_path / "empty").mkdir()
    demo = build_app("smollm2-135m", [tmp_path / "empty"], registry=reg, out_dir=tmp_path / "out0")
    assert demo.workbench_tabs["Latent reasoning"].offer.recipe_folders == []
    final = _policy(tmp_path / "allowed" / "coconut" / "final", "coconut")  # makes the folder
    demo = build_app("smollm2-135m", [tmp_path / "allowed"], registry=reg, out_dir=tmp_path / "out1")
    assert demo.workbench_tabs["Latent reasoning"].offer.recipe_folders == [final]
    cfg = demo.config
    drop = [c for c in cfg["components"] if c.get("props", {}).get("label") == "policy"]
    assert drop and drop[0]["props"]["value"] == "trained"
