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
    embedding_dim: int | None  # None in a canonical document of architecture bot (not read)
    epochs: int
    lr: float
    lr_milestones: tuple[int, ...]
    lr_gamma: float
    momentum: float | None  # None in a canonical document of an Adam variant (not read)
    weight_decay: float
    batch_size: int
    positive_fraction: float | None  # None in a canonical document of a pk-sampler variant (not read)
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
    # BoT's tricks (issue 25; docs/paper-mapping.md, "BoT baseline"). Each default is "off": the AGNet recipe.
    architecture: str = "agnet"  # "agnet" or "bot" (one layer4, GAP, BNNeck, ID classifier; no attribute branch)
    last_stride: int = 2  # 1: layer4 does not downsample
    bnneck: bool = False  # triplet before the BatchNorm, identity loss and test descriptor after it
    id_label_smoothing: float = 0.0  # ε of the identity cross-entropy
    triplet: dict[str, float] | None = None  # {weight, margin}: batch-hard triplet loss; None or weight 0 = off
    warmup_epochs: int = 0  # linear warm-up of the learning rate over the first epochs
    warmup_factor: float = 0.1  # the warm-up starts at lr * warmup_factor
    random_erasing: float = 0.0  # probability of erasing a random rectangle of a training image
    sampler: str = "pairs"  # "pairs" (anchor + partner) or "pk" (P identities x K images)
    instances_per_identity: int = 4  # K of the pk sampler
    optimizer: str = "sgd"  # "sgd" (momentum) or "adam"

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
    def uses_triplet(self) -> bool:
        return self.triplet is not None and self.triplet["weight"] > 0

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
    settings = TrainSettings(**{k: v for k, v in merged.items() if k in known})
    overrides = variants[variant] or {}

    def where(key: str) -> str:
        return f"variants.{variant}.{key}" if key in overrides else f"training.{key}"

    problems = check_tricks(settings, where)
    if problems:
        raise ConfigError("; ".join(problems))
    return settings


def check_tricks(settings: TrainSettings, where) -> list[str]:
    """Cross-field rules of the BoT settings; each problem names its key (``where(key)`` gives it as written)."""
    problems = []
    if settings.architecture == "bot":
        used = [k for k in ("attributes", "verify") if settings.loss_weights[k] > 0]
        if used:
            problems.append(f"{where('loss_weights')}: architecture bot has no attribute branch and no verification "
                            f"head, so {' and '.join(used)} must be 0")
    if settings.sampler == "pk":
        k = settings.instances_per_identity
        if k < 2:
            problems.append(f"{where('instances_per_identity')}: {k}; the pk sampler needs K >= 2 images per "
                            "identity (a positive for every anchor)")
        elif settings.batch_size % k or settings.batch_size // k < 2:
            problems.append(f"{where('batch_size')}: {settings.batch_size} is not P x K with K = "
                            f"instances_per_identity = {k} and P >= 2 identities")
    if settings.triplet is not None and set(settings.triplet) != {"weight", "margin"}:
        problems.append(f"{where('triplet')}: needs exactly weight and margin, got {sorted(settings.triplet)}")
    if settings.uses_triplet and settings.batch_size < 2:
        problems.append(f"{where('triplet')}: needs batches of at least two images")
    first_drop = min(settings.lr_milestones, default=settings.epochs)
    if settings.warmup_epochs and settings.warmup_epochs > min(first_drop, settings.epochs - 1):
        problems.append(f"{where('warmup_epochs')}: {settings.warmup_epochs} epochs of warm-up do not end before the "
                        f"first lr step (epoch {first_drop}) and the last epoch ({settings.epochs}); lower it or move "
                        "lr_milestones")
    return problems


def from_dict(record: dict[str, Any]) -> TrainSettings:
    """Inverse of :meth:`TrainSettings.to_dict` (a key left out, as in an older record or a canonical training
    document, takes its default: the trick is off)."""
    record = dict(record)
    record["input_size"] = tuple(record["input_size"])
    record["lr_milestones"] = tuple(record["lr_milestones"])
    return TrainSettings(**record)
