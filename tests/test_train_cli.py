"""`python -m workbench.train` / `workbench train`: recipes listed, configs resolved, a latent recipe end to end."""

from __future__ import annotations

import json

import pytest

from workbench.cli import main as cli_main
from workbench.train.recipes import RECIPES, main


def test_help_lists_every_recipe(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for name in ("bake", "coconut", "projection-head", "latent-head", "pause"):
        assert name in out
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    assert "projection-head" in capsys.readouterr().out


def test_every_recipe_is_implemented():
    assert all(r.run is not None and r.config_class is not None for r in RECIPES.values())


def test_latent_recipe_through_the_command_line(micro_dir, tmp_path, capsys):
    out = tmp_path / "pause"
    sets = ["--set", f"model={json.dumps(str(micro_dir))}", "--set", "steps=2", "--set", "n_train=8", "--set", "batch_size=4",
            "--set", "eval_n=0", "--set", "progress=false", "--set", "device=\"cpu\""]  # fmt: skip
    assert main(["pause", "--out", str(out), *sets]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["status"] == "done" and (out / "final" / "latent_policy.json").is_file()
    # a finished run resumed is a no-op that still writes its result; a fresh run refuses to overwrite
    first_loss = json.loads((out / "final" / "train_summary.json").read_text())["final_loss"]
    assert main(["pause", "--out", str(out), *sets, "--resume"]) == 0
    capsys.readouterr()
    # the resumed run took no step; its summary still reports the loss the run finished with (was null)
    assert json.loads((out / "final" / "train_summary.json").read_text())["final_loss"] == pytest.approx(first_loss)
    assert main(["pause", "--out", str(out), *sets]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    # the latent head needs </think> to self-exit: a model without one is refused before any training
    assert main(["latent-head", "--out", str(tmp_path / "c"), "--set", "model=\"smollm2-135m\"", "--set", "device=\"cpu\"", "--set", "n_train=8"]) == 2
    assert "</think>" in capsys.readouterr().err and not (tmp_path / "c" / "final").exists()


def test_config_file_and_overrides_resolve(tmp_path, capsys):
    cfg = tmp_path / "bake.json"
    cfg.write_text(json.dumps({"steps": 7, "lr": 0.01, "future_key": 1}))
    with pytest.warns(UserWarning, match="future_key"):
        assert main(["bake", "--config", str(cfg), "--set", "lora_rank=4", "--set", "vector=v.safetensors", "--out", str(tmp_path / "o"), "--print-config"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["steps"] == 7 and got["lr"] == 0.01 and got["lora_rank"] == 4 and got["vector"] == "v.safetensors"
    assert got["out_dir"] == str(tmp_path / "o") and got["config_class"] == "BakeConfig"
    assert main(["bake", "--set", "steps=0", "--print-config"]) == 2
    assert "steps must be" in capsys.readouterr().err
    assert main(["bake", "--out", str(tmp_path / "o2")]) == 2  # no vector given
    assert "needs a steering vector" in capsys.readouterr().err
