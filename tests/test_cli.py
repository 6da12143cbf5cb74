"""The `workbench` command line (in-process, plus one real subprocess)."""

from __future__ import annotations

import subprocess
import sys

from workbench.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("info", "generate", "lens", "bench", "models"):
        assert cmd in out


def test_module_entry_point_is_the_command():
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "--help"], capture_output=True, text=True, check=True)
    assert "usage: workbench" in out.stdout


def test_info_qwen_tiny(capsys):
    assert main(["info", "qwen3.5-tiny", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "qwen3_5_text" in out and "[3, 7]" in out and "linear_attention" in out


def test_generate_and_lens(capsys, smol):
    assert main(["generate", "What is the capital of France?", "--max-new-tokens", "12", "--device", "cpu"]) == 0
    eager = capsys.readouterr().out
    assert "Paris" in eager
    assert main(["generate", "What is the capital of France?", "--max-new-tokens", "12", "--device", "cpu", "--fast", "on"]) == 0
    assert capsys.readouterr().out == eager
    assert main(["lens", "The capital of France is", "--layer", "29", "--layer", "10", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and out.count("\n") == 3


def test_bad_layer_is_a_clear_error(capsys, smol):
    assert main(["lens", "hi", "--layer", "99", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "layer 99 is out of range" in err and "0..29" in err


def test_unknown_model(capsys):
    assert main(["info", "nope-model"]) == 2
    assert "smollm2-135m" in capsys.readouterr().err
