"""Per-query results (agnet.queries): what a run's queries.parquet holds, and the checks that refuse a stale one."""

from __future__ import annotations

import pandas as pd
import pytest

from agnet.errors import AgnetError
from agnet.evaluate import EvalSettings, evaluate_run
from agnet.queries import check_against_runs, load_for_runs, read_queries, run_means, write_queries
from tests.test_evaluate import features_for, vehicleid_frame


def veri_frame(vehicles=8, cameras=3):
    rows = []
    for v in range(vehicles):
        for cam in range(cameras):
            rows.append({"path": f"image_test/{v}_{cam}.jpg", "split": "gallery", "vehicle_id": v, "camera_id": cam,
                         "timestamp": 100 * cam})
        rows.append({"path": f"image_query/{v}_0.jpg", "split": "query", "vehicle_id": v, "camera_id": 0,
                     "timestamp": 0})
    return pd.DataFrame(rows)


PROVENANCE = {"dataset": "toy", "variant": "agnet_asl", "seed": 3, "features_sha256": "f" * 64}


def run_rows(records, provenance=PROVENANCE):
    return pd.DataFrame([{"dataset": provenance["dataset"], "variant": provenance["variant"],
                          "seed": provenance["seed"], "descriptor": r["descriptor"], "protocol": r["protocol"],
                          "mAP": r["mAP"], "rank1": r["rank1"], "features_sha256": provenance["features_sha256"]}
                         for r in records])


@pytest.fixture
def vehicleid_run(tmp_path):
    frame = vehicleid_frame()
    features = features_for(frame, noise=1.0)
    queries: list = []
    records = evaluate_run(features, frame, {}, ["Attr", "All"], ["vehicleid-10", "vehicleid-20"],
                           EvalSettings(trials=3, max_rank=5), queries)
    path = tmp_path / "queries.parquet"
    write_queries(path, queries, PROVENANCE)
    return records, path


def test_per_query_rows_average_to_the_reported_metrics(vehicleid_run):
    records, path = vehicleid_run
    table, meta = read_queries(path)
    assert meta["features_sha256"] == PROVENANCE["features_sha256"]
    assert set(table["seed"]) == {3} and set(table["trial"]) == {0, 1, 2}
    means = run_means(table).set_index(["descriptor", "protocol"])["mAP"]
    for record in records:
        rows = table[(table["descriptor"] == record["descriptor"]) & (table["protocol"] == record["protocol"])]
        assert means[(record["descriptor"], record["protocol"])] == pytest.approx(record["mAP"], abs=1e-12)
        hits = rows.groupby("trial")["first_match_rank"].apply(lambda r: float((r == 1).mean()))
        assert hits.mean() == pytest.approx(record["rank1"], abs=1e-12)
        # every query of a trial is a test image of the list, one gallery image per vehicle held out
        size = int(record["protocol"].split("-")[1])
        assert rows.groupby("trial")["vehicle_id"].nunique().eq(size).all()
        assert len(rows) == 3 * (5 * size - size)


def test_veri_per_query_rows_follow_the_query_order_and_the_junk_rule():
    frame = veri_frame()
    features = features_for(frame, noise=0.01)
    queries: list = []
    records = evaluate_run(features, frame, {"camera_dist": None}, ["ID"], ["veri"], EvalSettings(max_rank=10),
                           queries)
    rows = queries[0]
    assert list(rows["vehicle_id"]) == list(frame[frame["split"] == "query"]["vehicle_id"])
    assert rows["ap"].mean() == pytest.approx(records[0]["mAP"]) and (rows["first_match_rank"] == 1).all()


def test_a_stale_or_foreign_per_query_file_is_refused(vehicleid_run, tmp_path):
    records, path = vehicleid_run
    runs = run_rows(records)
    table, meta = read_queries(path)
    check_against_runs(table, meta, runs, path)  # the matching file passes
    assert len(load_for_runs([path], runs)) == len(table)
    stale = runs.assign(mAP=runs["mAP"] + 0.01)
    with pytest.raises(AgnetError, match="stale or of another run"):
        check_against_runs(table, meta, stale, path)
    with pytest.raises(AgnetError, match="computed from features"):
        check_against_runs(table, meta, runs.assign(features_sha256="e" * 64), path)
    with pytest.raises(AgnetError, match="a run the runs table lacks"):
        check_against_runs(table, meta, runs.assign(seed=4), path)
    extra = pd.concat([runs, runs.iloc[:1].assign(protocol="vehicleid-30")])
    with pytest.raises(AgnetError, match="lacks the queries of Attr vehicleid-30"):
        check_against_runs(table, meta, extra, path)
    with pytest.raises(AgnetError, match="both hold the per-query results"):
        load_for_runs([path, path], runs)


def test_a_malformed_per_query_file_names_what_is_wrong(vehicleid_run, tmp_path):
    _, path = vehicleid_run
    table, _ = read_queries(path)
    broken = tmp_path / "broken.parquet"
    table.assign(ap=table["ap"] * 2 + 0.5).to_parquet(broken)
    with pytest.raises(AgnetError, match="expected AP in \\[0, 1\\]"):
        read_queries(broken)
    table.drop(columns="vehicle_id").to_parquet(broken)
    with pytest.raises(AgnetError, match="lacks vehicle_id"):
        read_queries(broken)
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(AgnetError, match="not a per-query Parquet file"):
        read_queries(tmp_path / "text.parquet")
    with pytest.raises(AgnetError, match="no such per-query file"):
        read_queries(tmp_path / "absent.parquet")
