"""Workflow configuration: load, fill defaults, and validate against the schema shipped in the package
(``agnet/schemas/config.schema.yaml``, package data, so an installed ``agnet`` validates without a checkout).

:func:`validate_config` is the one validation: ``agnet config check``, every command taking ``--config``
and the workflow (``workflow/rules/common.smk``) all call it.

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
# `lr: 1e-3` arrives as the string "1e-3". Where the schema wants a number, such a string is read as one.
_NUMBER_TEXT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_JSON_TYPES = {str: "the string", bool: "the boolean", int: "the integer", float: "the number", list: "a list",
               dict: "a mapping", type(None): "nothing (null)"}
_SCHEMA_TYPES = {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "true or false",
                 "array": "a list", "object": "a mapping"}


def _wants_number(error: jsonschema.ValidationError) -> bool:
    wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    return error.validator == "type" and "number" in wanted


def _coerce_numbers(validator, config: dict[str, Any]) -> None:
    """Replace, in place, strings such as "1e-3" where the schema expects a number by their float value."""
    for error in list(validator.iter_errors(config)):
        text = error.instance
        if _wants_number(error) and isinstance(text, str) and _NUMBER_TEXT.fullmatch(text.strip()):
            *parents, last = list(error.absolute_path)
            holder = config
            for part in parents:
                holder = holder[part]
            holder[last] = float(text)


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
    _check_train_variants(config, source)
    return config


def _check_train_variants(config: dict[str, Any], source: str) -> None:
    """Every name in ``train_variants`` must be a variant whose settings resolve (as the workflow needs)."""
    from agnet.train.settings import resolve_settings  # imports this module: not at the top

    defined = config["variants"]
    unknown = [name for name in config["train_variants"] if name not in defined]
    if unknown:
        raise ConfigError(f"{source}: train_variants: {', '.join(map(repr, unknown))} not defined under 'variants' "
                          f"(defined: {', '.join(sorted(defined)) or 'none'})")
    for name in config["train_variants"]:
        try:
            resolve_settings(config, name)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None


def load_config(*paths: str | Path) -> dict[str, Any]:
    """Read one or more YAML config files, merge them in order (later ones override, recursively,
    as Snakemake's ``--configfile`` does) and validate the result."""
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


def figure_run(config: dict[str, Any]) -> tuple[str, int]:
    """The (variant, seed) whose features the report illustrates (Fig. 7/8), from ``figures`` in the config:
    ``variant`` default AGNet-ASL if trained, else the last of ``train_variants``; ``seed`` default the first."""
    chosen = config.get("figures") or {}
    variants, seeds = config["train_variants"], config["seeds"]
    variant = chosen.get("variant") or ("agnet_asl" if "agnet_asl" in variants else variants[-1])
    seed = chosen.get("seed")
    seed = seeds[0] if seed is None else seed
    if variant not in variants:
        raise ConfigError(f"figures.variant: {variant!r} is not trained (train_variants: {', '.join(variants)})")
    if seed not in seeds:
        raise ConfigError(f"figures.seed: {seed} is not trained (seeds: {', '.join(map(str, seeds))})")
    return variant, seed
