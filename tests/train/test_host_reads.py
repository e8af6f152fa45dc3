"""The training step reads nothing from the device on the host: only the loop's read points do.

On a GPU every ``.item()``, ``bool(tensor)``, ``.cpu()``, boolean-mask index … waits for the device to
drain, so nothing overlaps across steps. Counted on a CPU by instrumenting those calls
(:class:`agnet.train.hostreads.HostReadCounter`).
"""

from __future__ import annotations

import pytest

from agnet.train.hostreads import HostReadCounter
from agnet.train.loop import train
from tests.train.test_loop import config_files, manifest, settings_for  # noqa: F401 - shared fixtures


@pytest.mark.parametrize("log_every", [5])
def test_no_host_read_inside_the_step(log_every, manifest, config_files, tmp_path):  # noqa: F811
    settings = settings_for(config_files, epochs=2, log_every=log_every, decoded_cache=False)
    with HostReadCounter() as counter:
        record = train(settings, manifest, tmp_path / "run", seed=0, progress=False)
    steps, per_epoch = record["steps"], record["steps_per_epoch"]
    assert counter.steps == steps == 2 * per_epoch
    inside = counter.in_steps()
    assert inside == [], f"{len(inside)} host reads inside the step, e.g. {inside[:5]}"
    # one read of the device sums every log_every steps and at each epoch's end, nowhere else
    points = counter.at_points("_read_device_sums")
    expected = [k for k in range(1, steps + 1) if (k - 1) % per_epoch + 1 in
                (*range(log_every, per_epoch + 1, log_every), per_epoch)]
    assert [r.steps_done for r in points] == expected
    assert all(r.method == "tolist" for r in points)


def test_the_counter_sees_what_it_should():
    """The instrument itself: each kind of host read is caught (so the test above can fail)."""
    import torch

    x = torch.arange(4.0)
    with HostReadCounter() as counter:
        x.sum().item()
        bool(x.any())
        x[x > 1]
        x.tolist()
        float(x[0])
        x.cpu()
    assert [r.method for r in counter.reads] == ["item", "__bool__", "boolean-mask indexing", "tolist", "__float__",
                                                 "cpu"]
    assert all(r.point is None for r in counter.reads)
