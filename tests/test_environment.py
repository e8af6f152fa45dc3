"""The one pinned environment: environment.yml, requirements.lock and pyproject.toml agree."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

TOOLING = {"python", "pip"}  # conda-side tooling, not in a pip freeze
VENV_TOOLING = {"pip", "setuptools", "wheel", "agnet"}  # what a venv and `pip install -e .` add beside the lock


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].split(";")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"requirements.lock: {line!r} is not pinned with =="
            pins[normalise(name)] = version
    return pins


def env_pins() -> tuple[dict[str, str], dict[str, str]]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                name, sep, version = line.partition("==")
                assert sep, f"environment.yml pip entry {line!r} is not pinned with =="
                pip[normalise(name)] = version
        else:
            name, sep, version = dep.partition("=")
            assert sep and version and not version.startswith("="), f"environment.yml: {dep!r} is not pinned exactly"
            conda[normalise(name)] = version
    assert env["channels"][0] == "conda-forge"
    return conda, pip


def test_every_environment_pin_matches_the_lock():
    lock = lock_pins()
    conda, pip = env_pins()
    for name, version in {**conda, **pip}.items():
        if name in TOOLING:
            continue
        assert name in lock, f"{name} is pinned in environment.yml but missing from requirements.lock"
        assert lock[name] == version, f"{name}: environment.yml {version} != requirements.lock {lock[name]}"


def test_torch_pins_are_the_required_pip_builds():
    _, pip = env_pins()
    assert pip == {"torch": "2.14.1", "torchvision": "0.29.1"}
    assert lock_pins()["torch"] == "2.14.1"


def test_python_pin_satisfies_pyproject():
    conda, _ = env_pins()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.12" and conda["python"].startswith("3.11.")


def test_every_pyproject_dependency_is_pinned_in_both():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"]) + [d for extra in project["optional-dependencies"].values() for d in extra]
    conda, pip = env_pins()
    lock = lock_pins()
    for name in map(normalise, names):
        assert name in lock, f"pyproject dependency {name} is not in requirements.lock"
        assert name in conda or name in pip, f"pyproject dependency {name} is not in environment.yml"


def test_every_rule_declares_the_environment():
    """Every rule that starts a job in a shell runs in the pinned environment; a `run:` rule (the settings
    documents, written by the Snakemake process itself) starts none and cannot take a conda: directive."""
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        text = rules.read_text()
        blocks = re.split(r"^(?=rule \w+:)", text, flags=re.MULTILINE)[1:]
        shell_rules = [b.split(":", 1)[0] for b in blocks if "\n    run:\n" not in b]
        declared = text.count('conda:\n        "../../environment.yml"')
        assert declared == len(shell_rules), f"{rules.name}: {len(shell_rules)} shell rules, {declared} conda: directives"


def installed_versions() -> dict[str, str]:
    return {normalise(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


def test_environment_pins_are_what_is_installed():
    """The environment running the tests (CI's venv, or `conda env create -f environment.yml`) has every
    pin of environment.yml at exactly that version."""
    conda, pip = env_pins()
    installed = installed_versions()
    wrong = {name: (version, installed.get(name, "not installed"))
             for name, version in {**conda, **pip}.items()
             if name not in TOOLING and installed.get(name, "").split("+")[0] != version}
    assert not wrong, f"environment.yml pin != installed version: {wrong}"


def test_a_pip_environment_is_exactly_the_lock():
    """In a venv made by the README's command nothing is missing from requirements.lock or unpinned: a new
    transitive dependency shows up here before it can drift between machines."""
    if (Path(sys.prefix) / "conda-meta").is_dir():
        pytest.skip("a conda environment resolves its own closure of the same direct pins (checked above)")
    installed = {name: version.split("+")[0] for name, version in installed_versions().items()
                 if name not in VENV_TOOLING}
    lock = lock_pins()
    extra = sorted(f"{n}=={v}" for n, v in installed.items() if n not in lock)
    missing = sorted(n for n in lock if n not in installed)
    differ = sorted(f"{n}: lock {lock[n]}, installed {installed[n]}" for n in lock if n in installed
                    and installed[n] != lock[n])
    assert not (extra or missing or differ), (
        f"requirements.lock and the installed environment differ: installed but not locked {extra}, "
        f"locked but not installed {missing}, other versions {differ}")
