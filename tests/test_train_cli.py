"""`python -m workbench.train` / `workbench train`: recipes listed, unimplemented ones say so."""

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


@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if r.run is None])
def test_unimplemented_recipes_fail_clearly(name, capsys, tmp_path):
    assert main([name, "--out", str(tmp_path / "x")]) == 2
    assert "not implemented yet" in capsys.readouterr().err
    assert cli_main(["train", name]) == 2
    assert not (tmp_path / "x").exists()


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
