"""Count host reads of tensor values during training (each one a host-device synchronisation on a GPU).

Used by ``tests/train/test_host_reads.py`` and ``benchmarks/bench_train.py``. While a
:class:`HostReadCounter` is active, every call of ``Tensor.item``/``tolist``/``cpu``/``numpy``/
``__bool__``/``__float__``/``__int__``/``__index__``/``__format__``/``nonzero`` and every indexing
with a boolean mask (its size depends on the data, so the host must wait for it) is recorded
with the number of optimizer steps completed so far and whether it came from one of the
training loop's read points (:data:`agnet.train.loop.HOST_READ_POINTS`: the ``log_every`` read of the
device sums, checkpoint writing, and finishing the run). On a CPU nothing actually waits, but the
same calls would on a GPU, so counting them on a CPU is a faithful test of the GPU step.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

READ_METHODS = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__float__", "__int__", "__index__",
                "__format__")


@dataclass
class Read:
    method: str
    steps_done: int  # optimizer steps completed when the read happened
    point: str | None  # the loop's read point it came from, or None (a read inside the step)


@dataclass
class HostReadCounter:
    """Context manager recording :class:`Read` s; ``steps`` counts optimizer steps (all optimizers)."""

    reads: list[Read] = field(default_factory=list)
    steps: int = 0

    def __enter__(self):
        from agnet.train.loop import HOST_READ_POINTS

        points = set(HOST_READ_POINTS)
        self._saved = {name: getattr(torch.Tensor, name) for name in (*READ_METHODS, "__getitem__")}

        def where() -> str | None:
            frame = sys._getframe(2)
            while frame is not None:
                if frame.f_code.co_name in points:
                    return frame.f_code.co_name
                frame = frame.f_back
            return None

        def wrap(name, original):
            def counted(tensor, *args, **kwargs):
                if not self._inside:
                    self._inside = True
                    try:
                        self.reads.append(Read(name, self.steps, where()))
                    finally:
                        self._inside = False
                return original(tensor, *args, **kwargs)

            return counted

        def getitem(tensor, index):
            indices = index if isinstance(index, tuple) else (index,)
            if not self._inside and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                self._inside = True
                try:
                    self.reads.append(Read("boolean-mask indexing", self.steps, where()))
                finally:
                    self._inside = False
            return self._saved["__getitem__"](tensor, index)

        self._inside = False
        self._hook = register_optimizer_step_post_hook(self._stepped)
        for name in READ_METHODS:
            setattr(torch.Tensor, name, wrap(name, self._saved[name]))
        torch.Tensor.__getitem__ = getitem
        return self

    def _stepped(self, optimizer, args, kwargs) -> None:
        self.steps += 1

    def __exit__(self, *exc) -> None:
        self._hook.remove()
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)

    def in_steps(self) -> list[Read]:
        """Reads made between the first optimizer step and the end, outside the loop's read points."""
        return [r for r in self.reads if r.steps_done >= 1 and r.point is None]

    def at_points(self, point: str) -> list[Read]:
        return [r for r in self.reads if r.point == point]
