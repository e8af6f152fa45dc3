"""Training settings: the config's ``training`` section with one variant's overrides applied.

A variant is a named set of overrides of ``training`` keys (merged recursively), so every
ablation is data, not code. :func:`resolve_settings` returns a frozen :class:`TrainSettings`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from agnet.config import deep_merge
from agnet.errors import ConfigError


@dataclass(frozen=True)
class TrainSettings:
    """One (variant) training recipe. Units: pixels, epochs, images; see the config schema."""

    variant: str
    backbone: str
    pretrained: str
    input_size: tuple[int, int]
    embedding_dim: int
    epochs: int
    lr: float
    lr_milestones: tuple[int, ...]
    lr_gamma: float
    momentum: float
    weight_decay: float
    batch_size: int
    positive_fraction: float
    hard_negative_fraction: float
    loss_weights: dict[str, float]
    verification_loss: str
    als: dict[str, float] | None  # None where the variant does not read it (agnet.settings.training_document)
    hflip: bool
    decoded_cache: bool | str  # True, False or "auto" (use it where it fits the job's memory limit)
    workers: int
    amp: str
    channels_last: str
    deterministic: bool
    log_every: int
    max_steps: int | None = None  # stop after this many optimizer steps in total (a truncated run, recorded)
    compile: bool = False  # torch.compile the forward pass (fixed batch shape; opt-in)

    @property
    def uses_attributes(self) -> bool:
        """Whether the variant may read colour/type labels at all (the attribute loss or ALS needs them).

        A variant for which this is False (Only-ID) trains on a training set whose attribute columns are
        never read (:meth:`agnet.train.data.TrainSet.from_manifest`), so neither its losses nor its pair
        sampling can depend on them: permuting the labels leaves its weights bit-identical (tested).
        """
        return self.loss_weights["attributes"] > 0 or (
            self.verification_loss == "als" and self.loss_weights["verify"] > 0
        )

    @property
    def effective_hard_negative_fraction(self) -> float:
        """``hard_negative_fraction`` where attributes may be used, else 0 (hard negatives are defined by them)."""
        return self.hard_negative_fraction if self.uses_attributes else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form (stored in checkpoints and run records)."""
        record = asdict(self)
        record["input_size"] = list(self.input_size)
        record["lr_milestones"] = list(self.lr_milestones)
        return record


def resolve_settings(config: dict[str, Any], variant: str) -> TrainSettings:
    """Settings of ``variant``: ``config['training']`` with ``config['variants'][variant]`` merged in."""
    variants = config.get("variants", {})
    if variant not in variants:
        raise ConfigError(f"variants: unknown variant {variant!r} (defined: {', '.join(sorted(variants)) or 'none'})")
    merged = deep_merge(config["training"], variants[variant])
    merged["variant"] = variant
    for key, size in (("loss_weights", ("category", "attributes", "verify")), ("als", ("theta", "alpha", "beta"))):
        missing = [k for k in size if k not in merged[key]]
        if missing:
            raise ConfigError(f"training.{key}: missing {', '.join(missing)} (variant {variant})")
    merged["input_size"] = tuple(merged["input_size"])
    merged["lr_milestones"] = tuple(merged["lr_milestones"])
    known = {f.name for f in fields(TrainSettings)}
    return TrainSettings(**{k: v for k, v in merged.items() if k in known})


def from_dict(record: dict[str, Any]) -> TrainSettings:
    """Inverse of :meth:`TrainSettings.to_dict`."""
    record = dict(record)
    record["input_size"] = tuple(record["input_size"])
    record["lr_milestones"] = tuple(record["lr_milestones"])
    return TrainSettings(**record)
