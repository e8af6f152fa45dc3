"""Inputs that cannot mix (issue 24): every file a stage reads is checked for what it is (columns, keys, types) and
where it came from (dataset, manifest) before any work, and a kill leaves nothing that a later run trusts or
that nothing removes. Each case is one clear line naming the file(s)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agnet.aggregate import OUTPUTS, aggregate, read_table
from agnet.cli import main
from agnet.data.manifest import make_manifest, read_manifest
from agnet.data.verify import verify_dataset
from agnet.errors import AgnetError
from agnet.fileio import SET_MARKER, file_set, remove_stale_temporaries, write_text
from tests.conftest import REPO


def metrics_file(path: Path, dataset: str = "veri-x", seed=0, manifest_sha256: str = "a" * 64,
                 fmt: str = "veri", **record_changes) -> Path:
    """A minimal metrics file as `agnet evaluate` writes it (one All/veri record)."""
    record = {"protocol": "veri", "descriptor": "All", "distance": "Euclidean on L2-normalised features",
              "ap": "non-interpolated", "mAP": 0.5, "cmc": [0.6, 0.7, 0.8, 0.9, 1.0], "mINP": 0.2, "num_queries": 10,
              "num_valid_queries": 10, "rank1": 0.6, "rank5": 1.0, "num_gallery": 50, **record_changes}
    provenance = {"dataset": dataset, "dataset_format": fmt, "variant": "agnet_asl", "seed": seed,
                  "manifest_sha256": manifest_sha256, "model_sha256": "b" * 64, "features_sha256": "c" * 64}
    path.write_text(json.dumps({"provenance": provenance, "evaluation": {"distance": "euclidean"},
                                "records": [record]}))
    return path


def run_cli(capsys, *argv) -> tuple[int, str]:
    status = main(["--log-level", "warning", *map(str, argv)])
    return status, capsys.readouterr().err.strip()


# ------------------------------------------------------------------------------------------- provenance


def test_aggregate_refuses_two_datasets_under_one_label(tmp_path):
    a = metrics_file(tmp_path / "a.json", seed=0, manifest_sha256="a" * 64)
    b = metrics_file(tmp_path / "b.json", seed=1, manifest_sha256="d" * 64)  # another twin, the same label
    with pytest.raises(AgnetError, match=r"b.json and .*a.json both say dataset 'veri-x' but were computed from "
                                         r"different data \(manifest sha256 dddddddddddd… vs aaaaaaaaaaaa…\)"):
        aggregate([a, b], tmp_path / "out")
    c = metrics_file(tmp_path / "c.json", seed=1, fmt="vehicleid")
    with pytest.raises(AgnetError, match=r"different data \(format vehicleid vs veri\)"):
        aggregate([a, c], tmp_path / "out")
    assert not (tmp_path / "out" / "summary.csv").exists()  # nothing written
    aggregate([a, metrics_file(tmp_path / "d.json", seed=1)], tmp_path / "out")  # same data, two seeds: fine


def _evaluated(path: Path, evaluation: dict, variant: str = "agnet_asl", seed: int = 0, descriptor: str = "All"
               ) -> Path:
    """A metrics file of ``variant`` evaluated with ``evaluation``."""
    data = json.loads(metrics_file(path, seed=seed, descriptor=descriptor).read_text())
    data["provenance"]["variant"], data["evaluation"] = variant, evaluation
    path.write_text(json.dumps(data))
    return path


def test_aggregate_takes_bot_scored_on_id_alone_and_still_refuses_a_stale_alpha_or_descriptor_list(tmp_path):
    agnet = {"distance": "euclidean", "descriptors": ["Attr", "ID", "All"], "alpha": 0.5, "alpha_sweep": [0.0, 1.0]}
    bot = {"distance": "euclidean", "descriptors": ["ID"]}  # no attribute branch: no All, so no α
    fresh = [_evaluated(tmp_path / "a0.json", agnet), _evaluated(tmp_path / "a1.json", agnet, seed=1),
             _evaluated(tmp_path / "b0.json", bot, "bot", descriptor="ID")]
    summary = aggregate(fresh, tmp_path / "out")
    assert set(summary["variant"]) == {"agnet_asl", "bot"}
    stale = [
        (_evaluated(tmp_path / "s1.json", {**agnet, "alpha": 0.3}, seed=2), r"alpha: 0\.3 vs 0\.5"),
        (_evaluated(tmp_path / "s2.json", {**bot, "distance": "cosine"}, "bot", seed=1, descriptor="ID"),
         r"distance: 'cosine' vs 'euclidean'"),
        (_evaluated(tmp_path / "s3.json", {**bot, "descriptors": ["ID", "Attr"]}, "bot", seed=1, descriptor="ID"),
         r"descriptors"),
        # a whole variant scored with an old descriptor list, beside fresh runs of others
        (_evaluated(tmp_path / "s4.json", {**agnet, "descriptors": ["ID", "All"]}, "agnet_ce"), r"descriptors"),
    ]
    for path, difference in stale:
        with pytest.raises(AgnetError, match=rf"{path.name} and .* were evaluated with different settings for "
                                             rf"dataset 'veri-x' \({difference}.*one of them is stale"):
            aggregate([*fresh, path], tmp_path / "out2")


def test_aggregate_states_each_folds_lambda_its_edge_and_the_control_once_per_run(tmp_path):
    """runs.csv: str_lambda (the folds' mean), str_lambdas and str_at_edge; summary: each seed's fold λs and the
    seeds with an edge; the spatio-temporal control is one row per run under the descriptor 'none'."""
    folds = [{"fold": 0, "lambda": 0.3, "at_edge": None}, {"fold": 1, "lambda": 2.0, "at_edge": "upper"}]
    rerank = {"lambda": 1.15, "lambdas": [0.3, 2.0], "folds": folds, "grid": [0.0, 0.5, 1.0], "max_doublings": 8,
              "fold_assignment": {"folds": 2, "seed": 0}, "at_edge": "upper"}
    paths = []
    for seed, changes in ((0, {"str": rerank}), (1, {"str": {**rerank, "lambda": 0.4, "lambdas": [0.3, 0.5],
                                                            "folds": [{**folds[0]}, {**folds[1], "lambda": 0.5,
                                                                                     "at_edge": None}]}})):
        path = metrics_file(tmp_path / f"{seed}.json", seed=seed, protocol="veri-str", **changes)
        data = json.loads(path.read_text())
        data["records"].append({**data["records"][0], "protocol": "veri-st", "descriptor": "none",
                                "distance": "none (spatio-temporal term only)"})
        del data["records"][1]["str"]
        path.write_text(json.dumps(data))
        paths.append(path)
    summary = aggregate(paths, tmp_path / "out")
    runs = pd.read_csv(tmp_path / "out" / "runs.csv", keep_default_na=False)
    rerun = runs[runs["protocol"] == "veri-str"].set_index("seed")
    assert rerun["str_lambdas"].tolist() == ["0.3/2", "0.3/0.5"] and rerun["str_at_edge"].tolist() == ["upper", ""]
    assert rerun["str_lambda"].astype(float).tolist() == [1.15, 0.4]
    assert rerun.loc[0, "str_tuning"].startswith("2 folds of the test vehicles (seed 0), grid 0–1 (3 values)")
    assert (runs["protocol"] == "veri-st").sum() == 2 and set(runs.loc[runs["protocol"] == "veri-st", "descriptor"]) == {
        "none"}
    row = summary[summary["protocol"] == "veri-str"].iloc[0]
    assert row["str_lambdas"] == "0.3/2; 0.3/0.5" and row["str_edge_seeds"] == 1
    assert summary.loc[summary["protocol"] == "veri-st", "str_lambdas"].isna().all()


@pytest.mark.parametrize("change, message", [
    ({"seed": "0"}, r"provenance.seed must be a non-negative integer, got '0'"),
    ({"seed": 1.5}, r"provenance.seed must be a non-negative integer, got 1.5"),
    ({"cmc": None}, r"record 0 \(All veri\): cmc must be a non-empty list of numbers in \[0, 1\], got 'None'"),
    ({"mAP": "0.5"}, r"record 0 \(All veri\): mAP must be a number in \[0, 1\], got '0.5'"),
    ({"mAP": 50.0}, r"mAP must be a number in \[0, 1\]"),
    ({"protocol": "veri_str"}, r"record 0: unknown protocol 'veri_str'"),
    ({"rank1": "high"}, r"record 0: rank1 must be a number"),
    ({"num_queries": None}, r"num_queries must be a count"),
    ({"trials": 3}, r"record 0: trials must be a non-empty list of trials, got '3'"),
    ({"str": 0.5}, r"record 0: str must be a mapping with a number 'lambda'"),
    ({"mAP_std": "wide"}, r"record 0: mAP_std must be a number"),
    ({"descriptor": "none"}, r"record 0: descriptor 'none' with protocol veri: 'none' is the descriptor of a protocol"),
    ({"protocol": "veri-st"}, r"record 0: descriptor 'All' with protocol veri-st"),
    ({"protocol": "veri-str", "str": {"lambda": 0.4, "folds": [{"lambda": 0.3, "at_edge": "top"}]}},
     r"record 0: str.folds must be a non-empty list of folds, each with a number 'lambda' and 'at_edge'"),
])
def test_a_malformed_metrics_file_is_one_line_naming_the_field(tmp_path, capsys, change, message):
    seed = change.pop("seed", 0)
    bad = metrics_file(tmp_path / "bad.json", seed=seed, **change)
    status, err = run_cli(capsys, "aggregate", bad, "--out", tmp_path / "out")
    assert status == 1 and err.startswith(f"agnet: error: {bad}: ") and len(err.splitlines()) == 1
    assert pd.Series([err]).str.contains(message).all(), err


def make_tables(tmp_path) -> Path:
    out = tmp_path / "metrics"
    aggregate([metrics_file(tmp_path / "a.json"), metrics_file(tmp_path / "b.json", seed=1)], out)
    return out


@pytest.mark.parametrize("command, flag, given, wanted", [
    ("tables", "--summary", "runs.csv", "summary"),
    ("claims", "--runs", "summary.csv", "runs"),
])
def test_swapped_tables_are_refused_naming_what_was_given(tmp_path, capsys, command, flag, given, wanted):
    out = make_tables(tmp_path)
    extra = (["--out", tmp_path / "t"] if command == "tables"
             else ["--markdown", tmp_path / "c.md", "--json", tmp_path / "c.json"])
    status, err = run_cli(capsys, "report", command, "--config", REPO / "config.yaml", "--config",
                          REPO / "workflow/configs/demo.yaml", flag, out / given, *extra)
    assert status == 1
    assert f"{out / given}: not a {wanted} table" in err and f"pass the {wanted} table" in err
    assert not (tmp_path / "t").exists() and not (tmp_path / "c.md").exists()


def test_a_manifest_without_a_column_is_refused_before_any_work(tmp_path, capsys):
    manifest = tmp_path / "m.parquet"
    make_manifest("veri", REPO / "tests/fixtures/veri", manifest)
    table = pq.read_table(manifest)
    stripped = tmp_path / "stripped.parquet"
    pq.write_table(table.drop(["camera_id"]).replace_schema_metadata(table.schema.metadata), stripped)
    with pytest.raises(AgnetError, match=r"stripped.parquet: the manifest lacks column\(s\) camera_id; rebuild it"):
        read_manifest(stripped)
    status, err = run_cli(capsys, "evaluate", "--config", REPO / "config.yaml", "--features", tmp_path / "none.pt",
                          "--manifest", stripped, "-o", tmp_path / "m.json")
    assert status == 1 and "lacks column(s) camera_id" in err and len(err.splitlines()) == 1
    frame = table.to_pandas()
    frame["vehicle_id"] = frame["vehicle_id"].astype(str)
    retyped = tmp_path / "retyped.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(table.schema.metadata),
                   retyped)
    with pytest.raises(AgnetError, match=r"column\(s\) vehicle_id must hold integers"):
        read_manifest(retyped)


# ------------------------------------------------------------------------------------------- dataset readers


def test_two_list_files_of_one_test_size_are_refused(vehicleid_root):
    split = vehicleid_root / "train_test_split"
    shutil.copy(split / "test_list_2.txt", split / "test_list_02.txt")  # a stray copy
    report = verify_dataset("vehicleid", vehicleid_root)
    assert not report["valid"]
    assert any("test_list_02.txt and test_list_2.txt both name the test list of 2 vehicles" in e
               for e in report["errors"])


def test_an_image_in_training_and_test_is_refused_without_img2vid(vehicleid_root):
    (vehicleid_root / "attribute" / "img2vid.txt").unlink()
    split = vehicleid_root / "train_test_split"
    train_image = (split / "train_list.txt").read_text().split()[0]
    with open(split / "test_list_4.txt", "a") as lists:
        lists.write(f"{train_image} 999\n")  # the training image again, under a test vehicle
    report = verify_dataset("vehicleid", vehicleid_root)
    assert not report["valid"]
    assert any(f"image {train_image} is also in train_list.txt" in e for e in report["errors"]), report["errors"]


@pytest.mark.parametrize("listing, fmt", [("name_query.txt", "veri"), ("name_train.txt", "veri"),
                                          ("train_test_split/train_list.txt", "vehicleid"),
                                          ("train_test_split/test_list_2.txt", "vehicleid")])
def test_an_empty_list_fails_verification(veri_root, vehicleid_root, listing, fmt):
    root = veri_root if fmt == "veri" else vehicleid_root
    (root / listing).write_text("")
    report = verify_dataset(fmt, root)
    assert not report["valid"] and any("lists no image" in e for e in report["errors"]), report["errors"]


# ------------------------------------------------------------------------------------------- kills


KILLED_WRITER = """
import sys, time
from agnet.fileio import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"partial")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_killed_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "features.pt"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    live = list(tmp_path.glob(".features.pt.*.tmp"))
    assert len(live) == 1
    os.utime(live[0], (time.time() - 3600,) * 2)
    assert remove_stale_temporaries(target) == []  # an hour old, but its writer holds the lock: never removed
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert list(tmp_path.glob(".features.pt.*.tmp")) == live and not target.exists()  # left, never a partial target
    old = tmp_path / ".features.pt.Xyz12.tmp"  # an older agnet's name (no writer in it)
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 120,) * 2)
    fresh = tmp_path / ".features.pt.host-1.abc.tmp"  # unlocked but seconds old: maybe a writer about to lock it
    fresh.write_bytes(b"x")
    write_text(target, "done")
    assert target.read_text() == "done" and sorted(tmp_path.glob(".features.pt.*")) == [fresh]
    assert remove_stale_temporaries(target) == []


def test_a_set_interrupted_between_its_renames_is_refused_until_written_again(tmp_path, monkeypatch):
    out = make_tables(tmp_path)
    real_replace, calls = os.replace, []

    def dying_replace(src, dst):  # the process "dies" after the second of the five renames
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        aggregate([metrics_file(tmp_path / "c.json", seed=2)], out)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (out / SET_MARKER).is_file()
    for name in ("summary.csv", "runs.csv", "cmc.parquet"):
        with pytest.raises(AgnetError, match=r"its set \(.*\) was being replaced when the writer stopped"):
            read_table(out / name, {"summary.csv": "summary", "runs.csv": "runs", "cmc.parquet": "cmc"}[name])
    aggregate([metrics_file(tmp_path / "a.json"), metrics_file(tmp_path / "c.json", seed=2)], out)
    assert not (out / SET_MARKER).exists() and sorted(read_table(out / "runs.csv", "runs")["seed"]) == [0, 2]
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no staging folder or temporary left


def test_a_failed_set_leaves_the_old_set(tmp_path):
    out = make_tables(tmp_path)
    before = (out / "summary.csv").read_bytes()
    with pytest.raises(RuntimeError), file_set(out, OUTPUTS) as staged:
        staged["summary.csv"].write_text("new")
        raise RuntimeError("disk full")
    assert (out / "summary.csv").read_bytes() == before and sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)


# ------------------------------------------------------------------------------------------- environment


RANK = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import agnet.metrics as metrics
assert metrics.__file__.startswith(sys.argv[1]), metrics.__file__
result = metrics.evaluate(np.random.default_rng(0).random((5, 8)).astype("float32"), np.arange(5), np.arange(8) % 5)
print(metrics._CPU_PATH, round(result.mAP, 6))
"""


@pytest.mark.skipif(shutil.which("chattr") is None or os.geteuid() != 0, reason="needs root and chattr (immutable "
                    "folders stand for a read-only checkout and HOME, which root could otherwise write)")
def test_a_read_only_checkout_with_an_unwritable_home_still_ranks(tmp_path):
    """Numba caches the compiled kernel beside the package or in the user's cache; where neither can be written
    (a read-only checkout or image, HOME unwritable) it falls back to a temporary folder instead of failing."""
    shutil.copytree(REPO / "agnet", tmp_path / "agnet", ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "home"
    home.mkdir()
    locked = [tmp_path / "agnet", home]
    if subprocess.run(["chattr", "+i", *map(str, locked)], check=False, capture_output=True).returncode != 0:
        pytest.skip("this file system does not support immutable folders")
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
        done = subprocess.run([sys.executable, "-c", RANK, str(tmp_path)], env={**env, "HOME": str(home)},
                              capture_output=True, text=True, timeout=300, check=False)
    finally:
        subprocess.run(["chattr", "-i", *map(str, locked)], check=False)
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.split()[0] == "numba"  # the compiled kernel, cached in the fallback folder


def test_the_numba_fallback_folder_must_be_private_to_the_user(tmp_path, monkeypatch):
    """The fallback cache is unpickled on load: a folder someone else made (or left open to others) is not used."""
    import tempfile

    from agnet import metrics

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(metrics, "_writable", lambda folder: False)  # neither the package nor HOME writable
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    private = tmp_path / f"agnet-numba-cache-{os.getuid()}"
    assert metrics.numba_cache_dir() == str(private) and (private.stat().st_mode & 0o777) == 0o700
    private.chmod(0o777)  # now writable by anyone: refused, a fresh private folder instead
    chosen = Path(metrics.numba_cache_dir())
    assert chosen != private and chosen.parent == tmp_path and (chosen.stat().st_mode & 0o777) == 0o700
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert metrics.numba_cache_dir() is None  # the user's own choice wins
