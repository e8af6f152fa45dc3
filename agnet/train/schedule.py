"""Optimizer and learning-rate schedule of a training run (§IV.B; BoT's Adam and warm-up, issue 25).

The schedule is stepped once per epoch. Without warm-up it is ``MultiStepLR`` (lr × gamma at each milestone), the
AGNet recipe exactly. With ``warmup_epochs`` W > 0 (BoT, Luo et al. 2019, §3.1; FastReID's ``WarmupMultiStepLR``)
epoch e < W runs at lr × (f + (1 − f)·e/W), f = ``warmup_factor`` (BoT: W = 10, f = 0.1, i.e. 3.5e-5 → 3.5e-4),
and from epoch W on the same step schedule (lr × gamma^(milestones passed)).
"""

from __future__ import annotations

import bisect

import torch

from agnet.train.settings import TrainSettings


def lr_factor(settings: TrainSettings, epoch: int) -> float:
    """Multiplier of ``settings.lr`` in 0-based ``epoch`` (warm-up, then the step schedule)."""
    step = settings.lr_gamma ** bisect.bisect_right(sorted(settings.lr_milestones), epoch)
    warmup = settings.warmup_epochs
    if epoch < warmup:
        return (settings.warmup_factor + (1.0 - settings.warmup_factor) * epoch / warmup) * step
    return step


def make_optimizer(settings: TrainSettings, parameters, fused: bool) -> torch.optim.Optimizer:
    """SGD with momentum (AGNet) or Adam (BoT), both with ``weight_decay`` as L2; frozen parameters (a BNNeck's
    bias) are left out. ``fused``: one kernel per update (CUDA)."""
    parameters = [p for p in parameters if p.requires_grad]
    if settings.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=settings.lr, weight_decay=settings.weight_decay, fused=fused or None)
    return torch.optim.SGD(parameters, lr=settings.lr, momentum=settings.momentum,
                           weight_decay=settings.weight_decay, fused=fused or None)


def make_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings) -> torch.optim.lr_scheduler.LRScheduler:
    """``MultiStepLR`` without warm-up (today's schedule, bit for bit), else ``LambdaLR`` of :func:`lr_factor`."""
    if settings.warmup_epochs <= 0:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(settings.lr_milestones), settings.lr_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(settings, epoch))


def apply_changed_schedule(settings: TrainSettings, optimizer, scheduler, epoch: int) -> None:
    """After ``--allow-changed lr`` (or milestones/gamma): the learning rate of ``epoch`` under the new settings."""
    lr = settings.lr * lr_factor(settings, epoch)
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = settings.lr, lr
    scheduler.base_lrs = [settings.lr] * len(optimizer.param_groups)
    if isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR):
        scheduler.milestones = type(scheduler.milestones)(sorted(settings.lr_milestones))
        scheduler.gamma = settings.lr_gamma
    else:
        scheduler.lr_lambdas = [lambda e: lr_factor(settings, e)] * len(optimizer.param_groups)
    scheduler._last_lr = [lr] * len(optimizer.param_groups)
