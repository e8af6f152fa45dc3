"""The one pinned environment: environment.yml, requirements.lock and pyproject.toml agree."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.conftest import REPO

TOOLING = {"python", "pip"}  # conda-side tooling, not in a pip freeze


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
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        text = rules.read_text()
        rules_defined = re.findall(r"^rule (\w+):", text, flags=re.MULTILINE)
        declared = text.count('conda:\n        "../../environment.yml"')
        assert declared == len(rules_defined), f"{rules.name}: {len(rules_defined)} rules, {declared} conda: directives"
