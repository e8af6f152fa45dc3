"""Config validation: the shipped configs pass; unknown keys, wrong types and ranges are named."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from agnet.config import load_config, validate_config
from agnet.errors import ConfigError
from agnet.settings import check_config, figure_run
from tests.conftest import REPO


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_shipped_configs_are_valid(config):
    validated = validate_config(copy.deepcopy(config))
    assert validated["datasets"]["veri"]["strict"] is True
    assert validated["datasets"]["veri-synth"]["train_vehicles"] == "attribute-labelled"  # default filled
    assert "sha256" not in validated["datasets"]["veri"]["source"]  # optional for directories
    demo = yaml.safe_load((REPO / "workflow/configs/demo.yaml").read_text())
    assert set(demo["run"]) <= set(config["datasets"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.update(trian={}), r"\(top level\): unknown key\(s\) 'trian'"),
        (lambda c: c["datasets"]["veri"]["source"].update(lcoation="x"), r"datasets\.veri\.source: unknown key\(s\) 'lcoation'"),
        (lambda c: c["datasets"]["veri"].update(strict="yes"), r"datasets\.veri\.strict: expected true or false, got the string 'yes'"),
        (lambda c: c["datasets"]["veri-synth"]["source"].update(cameras=1), r"datasets\.veri-synth\.source\.cameras: 1 is less than the minimum of 2"),
        (lambda c: c["datasets"]["veri"].update(format="market"), r"datasets\.veri\.format: 'market' is not one of"),
        (lambda c: c["datasets"]["veri"]["source"].update(sha256="abc"), r"datasets\.veri\.source\.sha256: 'abc' does not match"),
        (lambda c: c["datasets"]["veri"]["source"].pop("location"), r"datasets\.veri\.source: 'location' is a required property"),
        (lambda c: c["datasets"]["veri-synth"]["source"].pop("vehicles"), r"datasets\.veri-synth\.source: 'vehicles' is a required property"),
        (lambda c: c.update(run=["veri", "nope"]), r"run: 'nope' not defined under 'datasets'"),
        (lambda c: c.update(train_variants=["agnet_asl", "agnet_als"]),
         r"^config.yaml: train_variants: 'agnet_als' not defined under 'variants' \(defined: agnet_asl, agnet_asl_shuffled, agnet_ce, agnet_ce_uniform, bot, bot_als, bot_attr, only_id\)$"),
        (lambda c: c["training"].update(lr="fast"), r"^config.yaml: training\.lr: expected a number, got the string 'fast'$"),
        (lambda c: c["training"].update(lr="1e-3x"), r"training\.lr: expected a number, got the string '1e-3x'"),
        (lambda c: c["datasets"]["veri"].update(source={"kind": "url", "location": "https://x/VeRi.zip"}),
         r"datasets\.veri\.source: 'sha256' is a required property"),
    ],
)
def test_bad_config_names_the_key(config, mutate, message):
    mutate(config)
    with pytest.raises(ConfigError, match=message):
        check_config(config, source="config.yaml")


def test_load_config_reports_yaml_errors(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("run: [veri\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: cannot read YAML"):
        load_config(bad)


@pytest.mark.parametrize("text, value", [("1e-3", 0.001), ("5E-4", 0.0005), ("+1.5e2", 150.0), (".5", 0.5)])
def test_yaml_1_1_number_strings_are_read_as_numbers(config, text, value):
    config["training"]["lr"] = text  # what PyYAML (and Snakemake) make of `lr: 1e-3`
    config["variants"]["agnet_asl"]["lr"] = text
    validated = validate_config(config)
    assert validated["training"]["lr"] == value and validated["variants"]["agnet_asl"]["lr"] == value


def test_lr_written_1e_3_in_a_yaml_file_is_a_float(tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text("training: {lr: 1e-3}\n")
    assert yaml.safe_load(overlay.read_text())["training"]["lr"] == "1e-3"  # the YAML 1.1 reading
    assert load_config(REPO / "config.yaml", overlay)["training"]["lr"] == 0.001


def test_overlay_alone_is_one_line_naming_the_base(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "workflow/configs/demo.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert "lacks the top-level section(s) 'datasets', so it is not a complete config" in message
    assert "agnet config check config.yaml workflow/configs/demo.yaml" in message


def test_the_schema_ships_inside_the_package():
    import tomllib

    import agnet
    from agnet.config import SCHEMA_PATH

    assert SCHEMA_PATH.is_file() and SCHEMA_PATH.is_relative_to(Path(agnet.__file__).parent)
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(SCHEMA_PATH.match(f"agnet/{pattern}") for pattern in package_data["agnet"])


def test_the_illustrated_run_is_a_config_choice(config):
    assert figure_run(validate_config(copy.deepcopy(config))) == ("agnet_asl", 0)
    config.update(figures={"variant": "agnet_ce", "seed": 2})
    assert figure_run(validate_config(copy.deepcopy(config))) == ("agnet_ce", 2)
    config.update(figures={"seed": 7})
    with pytest.raises(ConfigError, match=r"figures\.seed: 7 is not trained \(seeds: 0, 1, 2\)"):
        figure_run(validate_config(copy.deepcopy(config)))
