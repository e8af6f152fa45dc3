"""Evaluation protocols stated once (agnet.protocols): names, the lists a dataset is evaluated on, the images a
protocol reads, VehicleID's trials and VeRi's junk rule — the one the ranking kernel, the retrieval figure and
the dataset checks all follow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agnet.errors import AgnetError, ConfigError
from agnet.metrics import evaluate
from agnet.protocols import (
    RELEASE_TEST_SIZES,
    check_for_format,
    dataset_protocols,
    has_true_match,
    junk,
    list_protocols,
    manifest_protocols,
    parse,
    query_gallery,
)
from agnet.retrieval import rank_gallery

EVALUATION = {"str": {"enabled": True}, "vehicleid_test_sizes": [800, 1600, 2400, 3200]}


@pytest.mark.parametrize("name, fmt, size, reranked, appearance", [
    ("veri", "veri", None, False, True), ("veri-str", "veri", None, True, True), ("veri-st", "veri", None, True, False),
    ("vehicleid-800", "vehicleid", 800, False, True)])
def test_protocol_names_parse(name, fmt, size, reranked, appearance):
    parsed = parse(name)
    assert (parsed.format, parsed.test_size, parsed.reranked, parsed.appearance) == (fmt, size, reranked, appearance)


@pytest.mark.parametrize("name", ["bogus", "vehicleid-", "vehicleid-x", "vehicleid-0", "VeRi", "veri_str"])
def test_an_unknown_protocol_is_refused_naming_the_valid_ones(name):
    with pytest.raises(AgnetError, match=r"unknown protocol .* \(expected veri, veri-str, veri-st or vehicleid-<N>\)"):
        parse(name)
    with pytest.raises(AgnetError, match="unknown protocol"):
        list_protocols(["vehicleid-800", name])  # what extraction reads: never silently ignored


def test_list_protocols_orders_by_size_and_a_foreign_protocol_is_refused():
    assert list_protocols(["vehicleid-3200", "veri", "vehicleid-800"]) == ["vehicleid-800", "vehicleid-3200"]
    with pytest.raises(AgnetError, match=r"m.parquet: protocol\(s\) veri do not apply to a vehicleid dataset"):
        check_for_format(["vehicleid-800", "veri"], "vehicleid", "m.parquet")


def test_the_lists_a_dataset_is_evaluated_on_follow_its_source():
    real = {"format": "vehicleid", "source": {"kind": "directory", "location": "x"}}
    twin = {"format": "vehicleid", "source": {"kind": "synthetic", "vehicles": 200, "cameras": 6}}
    release = {"format": "vehicleid", "source": {"kind": "synthetic", "release_scale": 1.0}}
    veri = {"format": "veri", "source": {"kind": "directory", "location": "x"}}
    assert dataset_protocols("v", real, EVALUATION) == [f"vehicleid-{n}" for n in (800, 1600, 2400, 3200)]
    assert dataset_protocols("v", twin, EVALUATION) == ["vehicleid-25", "vehicleid-50", "vehicleid-75",
                                                        "vehicleid-100"]
    assert len(dataset_protocols("v", release, EVALUATION)) == 4
    assert dataset_protocols("v", veri, EVALUATION) == ["veri", "veri-str", "veri-st"]  # STR and its control
    assert dataset_protocols("v", veri, {**EVALUATION, "str": {"enabled": False}}) == ["veri"]
    for entry in (real, release):
        with pytest.raises(ConfigError, match=r"1500 is not a test list of VehicleID \(dataset 'v'"):
            dataset_protocols("v", entry, {**EVALUATION, "vehicleid_test_sizes": [800, 1500]})
    assert set(RELEASE_TEST_SIZES) >= set(EVALUATION["vehicleid_test_sizes"])


def test_a_manifest_outside_the_config_is_evaluated_on_its_configured_lists():
    frame = pd.DataFrame({"path": ["a"], "split": ["test"], "in_test_800": [True], "in_test_6000": [True]})
    assert manifest_protocols(frame, {"format": "vehicleid"}, EVALUATION) == ["vehicleid-800"]
    assert manifest_protocols(frame, {"format": "vehicleid"}, {**EVALUATION, "vehicleid_test_sizes": [7]}) == [
        "vehicleid-800", "vehicleid-6000"]  # none of the configured lists: all of the manifest's


def veri_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for split, count in (("query", 40), ("gallery", 200)):
        for i in range(count):
            rows.append({"path": f"{split}/{i}.jpg", "split": split, "vehicle_id": int(rng.integers(0, 12)),
                         "camera_id": int(rng.integers(0, 4))})
    return pd.DataFrame(rows)


def test_the_ranking_kernel_and_the_retrieval_figure_follow_the_one_junk_rule():
    frame = veri_frame()
    query, gallery, junk_rule = query_gallery(frame, "veri")
    assert junk_rule
    q = (query["vehicle_id"].to_numpy(), query["camera_id"].to_numpy())
    g = (gallery["vehicle_id"].to_numpy(), gallery["camera_id"].to_numpy())
    mask = junk(q[0], q[1], g[0], g[1])
    assert mask.shape == (len(query), len(gallery)) and mask.any()
    distmat = np.random.default_rng(1).random((len(query), len(gallery))).astype(np.float32)
    result = evaluate(distmat, q[0], g[0], q[1], g[1], max_rank=10)
    valid = has_true_match(query, gallery, junk_rule)
    assert result.num_valid == int(valid.sum())  # the kernel scores exactly the queries with a non-junk match
    # The kernel's rank of the first true match, recomputed from the junk mask: junk entries never count.
    for row in np.flatnonzero(valid):
        order = np.argsort(distmat[row], kind="stable")
        order = order[~mask[row][order]]
        first = int(np.flatnonzero(g[0][order] == q[0][row])[0]) + 1
        assert result.first_match_rank[row] == first
    tops = rank_gallery(distmat, g[0], 5, q_ids=q[0], q_cams=q[1], g_cams=g[1])
    assert all(not mask[row][top].any() for row, top in enumerate(tops))


def test_vehicleid_query_gallery_is_one_seeded_image_per_vehicle():
    frame = pd.DataFrame({"path": [f"{i}.jpg" for i in range(30)], "split": "test",
                          "vehicle_id": np.repeat(np.arange(10), 3), "in_test_10": True})
    query, gallery, junk_rule = query_gallery(frame, "vehicleid-10", trial=2, trial_seed=5)
    assert not junk_rule and len(gallery) == 10 and gallery["vehicle_id"].is_unique and len(query) == 20
    again = query_gallery(frame, "vehicleid-10", trial=2, trial_seed=5)[1]
    assert again["path"].tolist() == gallery["path"].tolist()
    with pytest.raises(AgnetError, match=r"no test_list_800.txt in this dataset \(lists: \[10\]\)"):
        query_gallery(frame, "vehicleid-800")
