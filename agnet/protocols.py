"""Evaluation protocols (§IV.A), stated once: their names, which test lists a dataset is evaluated on, which
images each protocol reads, its query/gallery split and its junk rule.

The workflow's plan (:mod:`agnet.settings`), extraction (the images it covers), evaluation (the splits it
scores) and the report's retrieval figure all call these functions; none derives a protocol on its own.

Names:

* ``veri``: VeRi-776's 1,678 queries against its test images; a gallery image of the query's vehicle seen by the
  query's own camera is *junk* (:func:`junk`) and removed from the ranking;
* ``veri-str``: the same split, ranked by the visual distance fused with a spatio-temporal term;
* ``veri-st``: the same split, ranked by the spatio-temporal term alone (no appearance): the control of ``veri-str``,
  which shows what time and camera topology achieve without the network (the same in every run; recorded under the
  descriptor label :data:`NO_DESCRIPTOR`);
* ``vehicleid-<N>``: VehicleID's ``test_list_<N>.txt``; per trial one seeded random image per vehicle is the
  gallery and every other image a query (:func:`vehicleid_trial`); no junk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agnet.errors import AgnetError, ConfigError

if TYPE_CHECKING:  # imported where used: the workflow plans protocols before the scientific stack is loaded
    import numpy as np
    import pandas as pd

VERI, VERI_STR, VERI_ST, VEHICLEID_PREFIX = "veri", "veri-str", "veri-st", "vehicleid-"
NAMES = "veri, veri-str, veri-st or vehicleid-<N>"
NO_DESCRIPTOR = "none"  # the descriptor label of a protocol that reads no features (veri-st)
# The test lists of the VehicleID release (train_test_split/test_list_<N>.txt, N vehicles each).
RELEASE_TEST_SIZES = (800, 1600, 2400, 3200, 6000, 13164)


@dataclass(frozen=True)
class Protocol:
    """A parsed protocol name: the dataset format it belongs to, its VehicleID test size, whether its ranking uses
    the spatio-temporal term (``reranked``: veri-str and veri-st) and whether it uses the features at all
    (``appearance``: False for veri-st alone)."""

    name: str
    format: str
    test_size: int | None = None
    reranked: bool = False
    appearance: bool = True


def parse(name: str) -> Protocol:
    """The protocol called ``name``; an unknown name is an error naming the valid ones."""
    if name == VERI:
        return Protocol(name, "veri")
    if name == VERI_STR:
        return Protocol(name, "veri", reranked=True)
    if name == VERI_ST:
        return Protocol(name, "veri", reranked=True, appearance=False)
    size = name.removeprefix(VEHICLEID_PREFIX) if isinstance(name, str) else ""
    if name.startswith(VEHICLEID_PREFIX) and size.isdigit() and int(size) > 0:
        return Protocol(name, "vehicleid", test_size=int(size))
    raise AgnetError(f"unknown protocol {name!r} (expected {NAMES})")


def vehicleid(size: int) -> str:
    """The protocol name of VehicleID's ``test_list_<size>``."""
    return f"{VEHICLEID_PREFIX}{int(size)}"


def test_list_column(size: int) -> str:
    """The manifest column marking the images of ``test_list_<size>.txt``."""
    return f"in_test_{int(size)}"


def manifest_test_lists(frame: pd.DataFrame) -> list[int]:
    """Sizes of the VehicleID test lists a manifest holds (its ``in_test_<N>`` columns), ascending."""
    return sorted(int(c.removeprefix("in_test_")) for c in frame.columns if c.startswith("in_test_"))


def _require_list(frame: pd.DataFrame, size: int) -> str:
    column = test_list_column(size)
    if column not in frame:
        raise AgnetError(f"no test_list_{size}.txt in this dataset (lists: {manifest_test_lists(frame)})")
    return column


# ------------------------------------------------------------------------------------- which protocols


def configured_test_sizes(name: str, entry: dict[str, Any], evaluation: dict[str, Any]) -> list[int]:
    """The VehicleID test lists dataset ``name`` (its config ``entry``) is evaluated on.

    Real data: ``evaluation.vehicleid_test_sizes``, each a list of the release. A release-size twin: its lists
    standing for those sizes. A small twin: its four nested lists (1/4 ... 4/4 of its test vehicles), whatever
    the configured sizes (it has no others)."""
    from agnet.data.constants import release_twin_test_size, twin_test_sizes

    source, sizes = entry["source"], list(evaluation["vehicleid_test_sizes"])
    if source["kind"] == "synthetic" and "release_scale" not in source:
        return twin_test_sizes(source["vehicles"])
    unknown = [size for size in sizes if size not in RELEASE_TEST_SIZES]
    if unknown:
        raise ConfigError(f"evaluation.vehicleid_test_sizes: {', '.join(map(str, unknown))} is not a test list of "
                          f"VehicleID (dataset {name!r}; the release has {', '.join(map(str, RELEASE_TEST_SIZES))})")
    if source["kind"] == "synthetic":
        return [release_twin_test_size(size, source["release_scale"]) for size in sizes]
    return sizes


def dataset_protocols(name: str, entry: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    """Every protocol dataset ``name`` is evaluated on: VeRi ``veri`` (+ ``veri-str`` and its control ``veri-st``
    when STR is enabled), VehicleID one per test list (:func:`configured_test_sizes`)."""
    if entry["format"] == "veri":
        return [VERI] + ([VERI_STR, VERI_ST] if evaluation["str"]["enabled"] else [])
    return [vehicleid(size) for size in configured_test_sizes(name, entry, evaluation)]


def manifest_protocols(frame: pd.DataFrame, meta: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    """The protocols of a manifest that is not a dataset of the config (``agnet evaluate`` run by hand): VeRi as
    :func:`dataset_protocols`; VehicleID each configured size the manifest has (all of its lists if none)."""
    if meta.get("format") == "veri":
        return [VERI] + ([VERI_STR, VERI_ST] if evaluation["str"]["enabled"] else [])
    lists = manifest_test_lists(frame)
    wanted = [size for size in evaluation["vehicleid_test_sizes"] if size in lists]
    return [vehicleid(size) for size in (wanted or lists)]


def check_for_format(protocols: Sequence[str], fmt: str, where: str) -> list[Protocol]:
    """Parse ``protocols`` and refuse one of another dataset format (e.g. ``veri`` on a VehicleID manifest)."""
    parsed = [parse(name) for name in protocols]
    foreign = [p.name for p in parsed if p.format != fmt]
    if foreign:
        raise AgnetError(f"{where}: protocol(s) {', '.join(foreign)} do not apply to a {fmt} dataset")
    return parsed


# ------------------------------------------------------------------------------------- which images


def list_protocols(protocols: Sequence[str] | None) -> list[str]:
    """The VehicleID test-list protocols among ``protocols`` (the only ones that limit the images a run reads),
    by test size; every name is checked."""
    lists = {p.test_size: p.name for p in map(parse, protocols or ()) if p.test_size is not None}
    return [lists[size] for size in sorted(lists)]


def evaluated_images(frame: pd.DataFrame, protocols: Sequence[str] | None = None) -> list[str]:
    """Unique image paths of every split but ``train``, in manifest order: the test/query/gallery images and, in a
    manifest built with ``--holdout-vehicles``, the held-out ``val`` vehicles (never an image the network trained on).

    ``protocols`` with VehicleID lists keeps only the images of those lists, as a VehicleID evaluation reads only
    its lists (the release's 800-3,200 lists hold 26,350 of its 108,221 test images). ``None``, or VeRi's
    protocols (which read every evaluation image), keeps them all."""
    keep = frame["split"] != "train"
    columns = [_require_list(frame, parse(name).test_size) for name in list_protocols(protocols)]
    if columns:
        keep &= frame[columns].fillna(False).astype(bool).any(axis=1)
    return list(dict.fromkeys(frame.loc[keep, "path"]))


# ------------------------------------------------------------------------------------- query and gallery


def veri_split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """VeRi's query and gallery rows of a manifest."""
    query, gallery = frame[frame["split"] == "query"], frame[frame["split"] == "gallery"]
    if query.empty or gallery.empty:
        raise AgnetError("the manifest has no VeRi query/gallery split (is it a VehicleID manifest?)")
    return query, gallery


def vehicleid_test(frame: pd.DataFrame, size: int) -> pd.DataFrame:
    """The test rows of ``test_list_<size>`` (index reset)."""
    column = _require_list(frame, size)
    return frame[(frame["split"] == "test") & frame[column].fillna(False).astype(bool)].reset_index(drop=True)


def vehicleid_trial(test: pd.DataFrame, size: int, trial: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (into ``test``) of (query, gallery) for one trial: one random gallery image per vehicle."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng([seed, size, trial])
    order = rng.permutation(len(test))
    first = pd.Series(test["vehicle_id"].to_numpy()[order]).duplicated().to_numpy()
    gallery = np.sort(order[~first])
    query = np.sort(order[first])
    return query, gallery


def query_gallery(frame: pd.DataFrame, protocol: str, *, trial: int = 0,
                  trial_seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """The query and gallery rows a protocol evaluates, and whether its junk rule (:func:`junk`) applies: VeRi's
    query vs gallery split; VehicleID's trial ``trial`` of ``test_list_<N>``."""
    parsed = parse(protocol)
    if parsed.format == "veri":
        query, gallery = veri_split(frame)
        return query.reset_index(drop=True), gallery.reset_index(drop=True), True
    test = vehicleid_test(frame, parsed.test_size)
    q, g = vehicleid_trial(test, parsed.test_size, trial, trial_seed)
    return test.iloc[q].reset_index(drop=True), test.iloc[g].reset_index(drop=True), False


def junk(q_ids, q_cams, g_ids, g_cams) -> np.ndarray:
    """VeRi's junk rule, (Q, G) bool: a gallery image of the query's own vehicle taken by the query's own camera
    (it includes the query's own copy). The compiled ranking kernel (:mod:`agnet.metrics`) applies the same rule
    to its match buckets, tested against this function."""
    import numpy as np

    q_ids, q_cams = np.asarray(q_ids)[:, None], np.asarray(q_cams)[:, None]
    return (q_ids == np.asarray(g_ids)[None, :]) & (q_cams == np.asarray(g_cams)[None, :])


def has_true_match(query: pd.DataFrame, gallery: pd.DataFrame, junk_rule: bool) -> np.ndarray:
    """Per query: whether the gallery holds its vehicle outside the junk (the queries a protocol scores)."""
    same = query["vehicle_id"].to_numpy()[:, None] == gallery["vehicle_id"].to_numpy()[None, :]
    if junk_rule:
        same &= ~junk(query["vehicle_id"], query["camera_id"], gallery["vehicle_id"], gallery["camera_id"])
    return same.any(axis=1)
