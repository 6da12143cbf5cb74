"""The notebooks run end to end (nbclient, offline, in a scratch folder) and are kept with
their outputs stripped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 900  # per cell, on a busy 2-core CPU


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_quickstart", "02_steering_vectors", "03_prefix_and_sinks", "04_latent_reasoning", "05_baking_vectors", "06_latent_trajectories"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs before committing"


QUICK = {"01_quickstart", "06_latent_trajectories"}  # the rest take minutes on a busy 2-core CPU: marked slow (06: about a minute)


@pytest.mark.parametrize(
    "path", [p if p.stem in QUICK else pytest.param(p, marks=pytest.mark.slow) for p in NOTEBOOKS], ids=lambda p: p.stem
)
def test_notebook_runs(path, tmp_path, monkeypatch):
    for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert "import apps" not in cell.source, "notebooks use the public library API, not the app"
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert os.listdir(tmp_path) == []  # files go to temporary folders, never the working folder
