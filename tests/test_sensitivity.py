"""α of Eq. 5 swept at evaluation (agnet.sensitivity): the configured α reproduces the All record exactly, α = 1
ranks as Attr, the fast Gram path agrees with the direct one, cross-fitting never uses a fold's own labels for its
α, and a malformed sweep in metrics.json is refused naming the file and the field."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from agnet.aggregate import read_metrics
from agnet.errors import AgnetError
from agnet.evaluate import EvalSettings, evaluate_run
from agnet.extract import load_features
from agnet.sensitivity import crossfit, fold_of, sweep_alpha, sweep_settings

ALPHAS = [0.0, 0.2, 0.5, 0.8, 1.0]
SETTINGS = EvalSettings(trials=3, max_rank=10)


def veri_frame(vehicles: int = 14, cameras: int = 4) -> pd.DataFrame:
    rows = []
    for v in range(vehicles):
        for c in range(cameras):
            rows.append({"path": f"q/{v}_{c}.jpg", "split": "query", "vehicle_id": 10 + v, "camera_id": c})
            for k in range(2):
                rows.append({"path": f"g/{v}_{c}_{k}.jpg", "split": "gallery", "vehicle_id": 10 + v, "camera_id": c})
    return pd.DataFrame(rows)


def vehicleid_frame(vehicles: int = 16, per_vehicle: int = 4) -> pd.DataFrame:
    rows = [{"path": f"t/{v}_{i}.jpg", "split": "test", "vehicle_id": 500 + v, "camera_id": i % 3,
             "in_test_16": True} for v in range(vehicles) for i in range(per_vehicle)]
    return pd.DataFrame(rows)


def write_features(path, frame: pd.DataFrame, seed: int = 0) -> None:
    """A features file in the stored form (float16 unit vectors, float32 norms): Attr and ID carry different, noisy
    views of the vehicle, so α changes the ranking."""
    rng = np.random.default_rng(seed)
    stored = {"paths": list(frame["path"]), "provenance": {"dataset": "x", "variant": "agnet_asl", "seed": 0}}
    for name, noise in (("Attr", 1.4), ("ID", 0.9)):
        centres = {v: rng.normal(size=12) for v in frame["vehicle_id"].unique()}
        values = torch.from_numpy(np.stack([centres[v] + noise * rng.normal(size=12) for v in frame["vehicle_id"]])
                                  .astype(np.float32)) * torch.from_numpy(rng.uniform(0.5, 2, (len(frame), 1))).float()
        norms = values.norm(dim=1, keepdim=True)
        stored[name], stored[f"{name}_norm"] = (values / norms).half(), norms
    torch.save(stored, path)


@pytest.fixture(params=["veri", "vehicleid-16"])
def run(request, tmp_path):
    frame = veri_frame() if request.param == "veri" else vehicleid_frame()
    write_features(tmp_path / "features.pt", frame)
    return frame, tmp_path / "features.pt", request.param


def _entry(sweep, alpha, protocol):
    return next(e for e in sweep["alpha_sweep"] if e["alpha"] == alpha and e["protocol"] == protocol)


def test_the_configured_alpha_reproduces_the_all_record_exactly(run):
    frame, path, protocol = run
    features = load_features(path, alpha=0.5)
    record = evaluate_run(features, frame, {}, ["All"], [protocol], SETTINGS)[0]
    sweep = sweep_alpha(features, frame, [protocol], {"alphas": ALPHAS}, 0.5, SETTINGS)
    point = _entry(sweep, 0.5, protocol)
    assert (point["mAP"], point["rank1"], point["rank5"]) == (record["mAP"], record["rank1"], record["rank5"])
    assert sorted(e["alpha"] for e in sweep["alpha_sweep"]) == ALPHAS
    assert 0.0 < point["mAP"] < 1.0  # not a degenerate fixture


def test_alpha_one_ranks_as_attr_and_every_alpha_matches_the_direct_computation(run):
    frame, path, protocol = run
    sweep = sweep_alpha(load_features(path, alpha=0.5), frame, [protocol], {"alphas": ALPHAS}, 0.5, SETTINGS)
    attr = evaluate_run(load_features(path), frame, {}, ["Attr"], [protocol], SETTINGS)[0]
    at_one = _entry(sweep, 1.0, protocol)  # Eq. 5 here: All = [f_attr, (1 - α) f_ID]: α = 1 leaves f_attr alone
    assert at_one["mAP"] == pytest.approx(attr["mAP"], abs=1e-9) and at_one["rank1"] == attr["rank1"]
    maps = []
    for alpha in (0.0, 0.2, 0.8):
        direct = evaluate_run(load_features(path, alpha=alpha), frame, {}, ["All"], [protocol], SETTINGS)[0]
        point = _entry(sweep, alpha, protocol)
        assert point["mAP"] == pytest.approx(direct["mAP"], abs=1e-9) and point["rank1"] == direct["rank1"]
        maps.append(point["mAP"])
    assert len(set(maps)) > 1  # α matters on this fixture


def test_crossfit_chooses_each_folds_alpha_on_the_other_fold():
    ids = np.arange(8)
    fold = fold_of(ids, seed=0)
    in0 = np.array([fold[v] == 0 for v in ids])
    # fold 0's queries are best at α = 0.2, fold 1's at α = 0.8
    ap = {0.2: np.where(in0, 0.9, 0.1), 0.8: np.where(in0, 0.3, 0.7)}
    per_alpha = {a: [(SimpleNamespace(ap=values, mAP=float(values.mean())), ids)] for a, values in ap.items()}
    fit = crossfit(per_alpha, configured=0.2, seed=0)
    assert [f["alpha"] for f in fit["folds"]] == [0.8, 0.2]  # each from the other fold: the honest (worse) choice
    assert fit["mAP"] == pytest.approx(np.where(in0, 0.3, 0.1).mean())
    assert fit["configured_mAP"] == pytest.approx(ap[0.2].mean()) and fit["best_alpha"] == 0.2


def test_a_folds_alpha_does_not_change_when_its_vehicle_labels_are_permuted(run):
    frame, path, protocol = run
    features = load_features(path, alpha=0.5)
    before = sweep_alpha(features, frame, [protocol], {"alphas": ALPHAS, "crossfit_seed": 3}, 0.5, SETTINGS)
    fold = fold_of(frame["vehicle_id"], seed=3)
    for k in (0, 1):
        members = sorted(v for v, f in fold.items() if f == k)
        relabel = dict(zip(members, np.roll(members, 1), strict=True))
        permuted = frame.assign(vehicle_id=[relabel.get(v, v) for v in frame["vehicle_id"]])
        after = sweep_alpha(features, permuted, [protocol], {"alphas": ALPHAS, "crossfit_seed": 3}, 0.5, SETTINGS)
        (fit_before,), (fit_after,) = before["alpha_crossfit"], after["alpha_crossfit"]
        assert fit_after["folds"][k]["alpha"] == fit_before["folds"][k]["alpha"]
        assert fit_after["folds"][k]["vehicles"] == fit_before["folds"][k]["vehicles"]


def test_the_fold_split_depends_only_on_the_set_of_vehicles():
    ids = [5, 9, 2, 7, 7, 3, 11, 2]
    assert fold_of(ids, 1) == fold_of(sorted(set(ids)), 1)
    assert list(fold_of(ids, 1).values()).count(0) == 3  # 6 vehicles dealt into two folds of 3


def test_sweep_settings_hold_the_configured_alpha_and_skip_what_is_not_swept():
    evaluation = {"alpha": 0.35, "alpha_sweep": [1.0, 0.0, 0.5], "trial_seed": 4}
    assert sweep_settings(evaluation, ["veri", "veri-str"]) == {"alphas": [0.0, 0.35, 0.5, 1.0],
                                                                "crossfit_folds": 2, "crossfit_seed": 0}
    assert sweep_settings(evaluation, ["veri-str"]) is None  # re-ranked protocols are not swept
    assert sweep_settings({**evaluation, "alpha_sweep": []}, ["veri"]) is None


def _metrics(tmp_path, **extra):
    data = {"provenance": {"dataset": "veri-synth", "variant": "agnet_asl", "seed": 0},
            "evaluation": {"alpha": 0.5},
            "records": [{"descriptor": "All", "protocol": "veri", "distance": "x", "mAP": 0.5, "cmc": [0.5, 0.7],
                         "num_queries": 3, "num_gallery": 9}],
            "alpha_sweep": [{"alpha": 0.5, "protocol": "veri", "mAP": 0.5, "rank1": 0.5, "rank5": 0.7}],
            "alpha_crossfit": [{"protocol": "veri", "mAP": 0.45, "folds": [{"fold": 0, "alpha": 0.5},
                                                                          {"fold": 1, "alpha": 0.5}]}]}
    data.update(extra)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("extra, message", [
    ({"alpha_sweep": [{"alpha": 1.5, "protocol": "veri", "mAP": 0.5, "rank1": 0.5, "rank5": 0.7}]},
     r"alpha_sweep\[0\]\.alpha must be a number in \[0, 1\], got 1\.5"),
    ({"alpha_sweep": [{"alpha": 0.5, "protocol": "veri", "rank1": 0.5, "rank5": 0.7}]}, r"alpha_sweep\[0\] lacks mAP"),
    ({"alpha_sweep": {"alpha": 0.5}}, r"alpha_sweep must be a non-empty list"),
    ({"alpha_sweep": [{"alpha": 0.5, "protocol": "veri-x", "mAP": 0.5, "rank1": 0.5, "rank5": 0.7}]},
     r"alpha_sweep\[0\]\.protocol: unknown protocol"),
    ({"alpha_crossfit": [{"protocol": "veri", "mAP": 0.4, "folds": []}]}, r"alpha_crossfit\[0\]\.folds must be"),
    ({"alpha_crossfit": None}, r"alpha_crossfit must be a list"),
])
def test_a_malformed_sweep_in_metrics_json_is_refused_naming_the_file_and_field(tmp_path, extra, message):
    path = _metrics(tmp_path, **extra)
    with pytest.raises(AgnetError, match=message) as info:
        read_metrics(path)
    assert str(path) in str(info.value)
    assert read_metrics(_metrics(tmp_path))["alpha_sweep"][0]["alpha"] == 0.5  # the well-formed file is read


def test_agnet_evaluate_writes_the_sweep_and_aggregate_reads_it(tmp_path_factory, tmp_path):
    """End to end on a trained twin run: metrics.json holds the sweep (the configured α equal to the All record)
    and the cross-fitted α; `agnet aggregate` accepts the file."""
    from agnet.aggregate import aggregate
    from agnet.cli import main
    from tests.test_extract import _cli_config, make_trained

    trained = make_trained(tmp_path_factory)
    config = _cli_config(trained)
    features = tmp_path / "features.pt"
    assert main(["extract", *config, "--model", str(trained / "run/model.pt"), "--manifest",
                 str(trained / "m.parquet"), "--out", str(features), "--dataset", "twin", "--no-progress"]) == 0
    out = tmp_path / "metrics.json"
    assert main(["evaluate", *config, "--features", str(features), "--manifest", str(trained / "m.parquet"),
                 "-o", str(out)]) == 0
    data = read_metrics(out)
    assert data["evaluation"]["alpha_sweep"]["alphas"] == [round(0.1 * i, 1) for i in range(11)]
    assert {e["protocol"] for e in data["alpha_sweep"]} == {"veri"} and len(data["alpha_sweep"]) == 11
    record = next(r for r in data["records"] if r["descriptor"] == "All" and r["protocol"] == "veri")
    assert _entry(data, data["evaluation"]["alpha"], "veri")["mAP"] == record["mAP"]
    (fit,) = data["alpha_crossfit"]
    assert fit["configured_mAP"] == record["mAP"] and len(fit["folds"]) == 2
    assert len(aggregate([out], tmp_path / "agg")) > 0
