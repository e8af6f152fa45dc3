"""Workflow configuration: load, fill defaults, and validate against the schema shipped in the package
(``agnet/schemas/config.schema.yaml``, package data, so an installed ``agnet`` validates without a checkout).

:func:`validate_config` checks the schema (and fills its defaults); :func:`agnet.settings.check_config` adds every
cross-field rule on top of it, and is what ``agnet config check``, every command taking ``--config`` and the
workflow (``workflow/rules/common.smk``) call, through :func:`agnet.settings.plan`.

Imported by the Snakefile before any job is scheduled, so it depends only on the standard
library, PyYAML and jsonschema (both Snakemake dependencies). Errors name the file, the key path
and what was expected, e.g. ``config.yaml: datasets.veri.source: unknown key 'lcoation'``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from agnet.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


def _with_defaults(validator_class):
    """A validator class that also fills ``default`` values of absent properties (in place)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema and key not in instance:
                    instance[key] = subschema["default"]
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


# A number as YAML 1.2 writes it. PyYAML (and so Snakemake) follows YAML 1.1, where a float needs a dot:
# `lr: 1e-3` arrives as the string "1e-3". Snakemake's `--config "evaluation={trial_seed: 3}"` likewise passes
# nested values as strings ("3", "true"). Where the schema wants a number, an integer or a boolean, such a string
# is read as one.
_NUMBER_TEXT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_INTEGER_TEXT = re.compile(r"[-+]?[0-9]+")
_BOOLEAN_TEXT = {"true": True, "false": False}
_JSON_TYPES = {str: "the string", bool: "the boolean", int: "the integer", float: "the number", list: "a list",
               dict: "a mapping", type(None): "nothing (null)"}
_SCHEMA_TYPES = {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "true or false",
                 "array": "a list", "object": "a mapping"}


def _read_as(error: jsonschema.ValidationError):
    """The value a string stands for where the schema wants a number, integer or boolean (None: no such value)."""
    text = error.instance
    if error.validator != "type" or not isinstance(text, str):
        return None
    wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    text = text.strip()
    if "integer" in wanted and _INTEGER_TEXT.fullmatch(text):
        return int(text)
    if "number" in wanted and _NUMBER_TEXT.fullmatch(text):
        return float(text)
    if "boolean" in wanted and text.lower() in _BOOLEAN_TEXT:
        return _BOOLEAN_TEXT[text.lower()]
    return None


def _coerce_numbers(validator, config: dict[str, Any]) -> None:
    """Replace, in place, strings such as "1e-3", "3" or "true" where the schema expects a number, an integer or
    a boolean by the value they stand for."""
    for error in list(validator.iter_errors(config)):
        value = _read_as(error)
        if value is not None:
            *parents, last = list(error.absolute_path)
            holder = config
            for part in parents:
                holder = holder[part]
            holder[last] = value


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    if error.validator == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        got = _JSON_TYPES.get(type(error.instance), type(error.instance).__name__)
        return f"{where}: expected {' or '.join(_SCHEMA_TYPES.get(w, w) for w in wanted)}, got {got} {error.instance!r}"
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {}))) or "none"
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (allowed: {allowed})"
    return f"{where}: {error.message}"


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in recursively (neither argument is modified)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Read the JSON schema (YAML syntax)."""
    if not path.is_file():
        raise ConfigError(f"config schema not found at {path} (a broken installation: reinstall agnet)")
    return yaml.safe_load(path.read_text())


def validate_config(config: dict[str, Any], source: str = "config", schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate ``config`` in place (filling defaults) and return it; raise ConfigError listing every problem."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(config).__name__}")
    schema = load_schema(schema_path)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    _coerce_numbers(validator, config)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    absent = [key for key in schema.get("required", []) if key not in config]
    if absent:
        # An overlay checked alone: one line saying so, instead of a "required property" line per missing key;
        # the overlay's own mistakes (unknown keys, bad values) are still listed.
        own = [f"{source}: {_describe(error)}" for error in errors if error.validator != "required"]
        overlay = (
            f"{source}: lacks the top-level section(s) {', '.join(map(repr, absent))}, so it is not a complete config. "
            "An overlay such as workflow/configs/demo.yaml only changes the base config.yaml; give the base first, "
            "e.g. `agnet config check config.yaml workflow/configs/demo.yaml` (or --config twice)"
        )
        raise ConfigError("\n".join([overlay, *own]))
    if errors:
        raise ConfigError("\n".join(f"{source}: {_describe(error)}" for error in errors))
    unknown = [name for name in config["run"] if name not in config["datasets"]]
    if unknown:
        raise ConfigError(f"{source}: run: {', '.join(map(repr, unknown))} not defined under 'datasets'")
    return config


def load_config(*paths: str | Path) -> dict[str, Any]:
    """Read one or more YAML config files, merge them in order (later ones override, recursively,
    as Snakemake's ``--configfile`` does) and validate the result against the schema."""
    if not paths:
        raise ConfigError("no config file given")
    config: dict[str, Any] = {}
    for path in map(Path, paths):
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read YAML ({error})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        config = deep_merge(config, loaded)
    return validate_config(config, source=" + ".join(map(str, paths)))

