"""Sensitivity of the All descriptor to Eq. 5's α, scored at evaluation time from the features already loaded.

The paper gives no α (Eq. 5: ``All = [f_attr, (1 − α)·f_ID]``, ``evaluation.alpha``). The evaluate job scores All at
every α of ``evaluation.alpha_sweep`` (the configured α always among them) on the dataset's protocols that do not
re-rank (``veri``, ``vehicleid-<N>``), and writes to ``metrics.json``:

* ``alpha_sweep``: one entry per (α, protocol) — ``{alpha, protocol, mAP, rank1, rank5}`` (VehicleID: the mean over
  the configured gallery draws, as the records);
* ``alpha_crossfit``: one entry per protocol — α chosen without scoring a query with an α tuned on its own labels.
  The paper protocol has no validation split of test identities, so α is *cross-fitted*: the protocol's test
  vehicles are split in two folds (a fixed seed, :data:`CROSSFIT_SEED`); the α with the best mean AP over fold 1's
  queries scores fold 0's queries and vice versa. The cross-fitted mAP (each query's AP at the α chosen on the other
  fold, averaged as the protocol's mAP) is an honest estimate of "α tuned on held-out identities"; beside it, the
  configured α's mAP and, for reference only, the test-tuned best of the sweep (optimistic: chosen on the very
  queries it scores).

Speed: every α shares two Gram matrices per query/gallery pair (Attr·Attrᵀ and ID·IDᵀ). On L2-normalised All,
``cos_α(q, g) = (A_qg + c·I_qg) / √((|a_q|² + c|i_q|²)(|a_g|² + c|i_g|²))`` with ``c = (1 − α)²``, so each further α
costs an element-wise combination and one ranking, not a matrix product over 2 × D dimensions. The configured α is
scored by exactly the computation of its ``All`` record (:func:`agnet.evaluate.evaluate_veri` /
``evaluate_vehicleid``), so its sweep entry equals Tables I–IV's All row bit for bit; other α agree with that direct
computation to float32 rounding (tested).

With this codebase's Eq. 5, α = 1 zeroes the ID half: All then ranks exactly as Attr. α = 0 is the plain
concatenation ``[f_attr, f_ID]`` (not ID alone).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agnet.errors import AgnetError

if TYPE_CHECKING:  # imported where used: the workflow plans (sweep_settings) without the scientific stack
    import numpy as np

CROSSFIT_FOLDS = 2
CROSSFIT_SEED = 0  # the fold split of the test vehicles (fixed: no setting of the paper protocol reads it)
SWEEP_KEYS = ("alpha", "protocol", "mAP", "rank1", "rank5")


# ------------------------------------------------------------------------------------------ settings


def sweep_settings(evaluation: dict[str, Any], protocols: list[str]) -> dict[str, Any] | None:
    """The ``alpha_sweep`` entry of an evaluate settings document, or None when nothing is swept (an empty
    ``evaluation.alpha_sweep``, or no protocol without re-ranking). The configured α is always among the values."""
    from agnet.protocols import parse

    alphas = evaluation.get("alpha_sweep") or []
    if not alphas or not any(not parse(p).reranked for p in protocols):
        return None
    values = sorted({float(a) for a in alphas} | {float(evaluation["alpha"])})
    return {"alphas": values, "crossfit_folds": CROSSFIT_FOLDS, "crossfit_seed": CROSSFIT_SEED}


# ------------------------------------------------------------------------------------------ scoring


def _gram(q_attr, g_attr, q_id, g_id) -> tuple:
    """The shared pieces of every α's cosine: the two Gram matrices and the squared row norms (float64 norms)."""
    import torch

    with torch.no_grad():
        attr, ident = (q_attr @ g_attr.T).numpy(), (q_id @ g_id.T).numpy()
    norms = [t.double().pow(2).sum(dim=1).numpy() for t in (q_attr, g_attr, q_id, g_id)]
    return attr, ident, norms


def _distance_at(gram: tuple, alpha: float, metric: str) -> np.ndarray:
    """The (Q, G) distance of All at ``alpha`` from :func:`_gram`: 2 − 2 cos (Euclidean on unit vectors) or 1 − cos."""
    import numpy as np

    attr, ident, (qa, ga, qi, gi) = gram
    c = (1.0 - alpha) ** 2
    q_norm = np.sqrt(qa + c * qi).astype(np.float32).clip(1e-12)
    g_norm = np.sqrt(ga + c * gi).astype(np.float32).clip(1e-12)
    cos = attr + np.float32(c) * ident
    cos /= q_norm[:, None]
    cos /= g_norm[None, :]
    return (np.float32(2.0) - 2.0 * cos) if metric == "euclidean" else (np.float32(1.0) - cos)


def _direct(features: dict[str, Any], alpha: float, paths):
    """All's rows at ``alpha`` exactly as the All record reads them (:func:`agnet.evaluate.features_of`)."""
    from agnet.evaluate import features_of
    from agnet.extract import FusedDescriptor

    fused = {**features, "All": FusedDescriptor(features["Attr"], features["ID"], alpha)}
    return features_of(fused, "All", paths)


def _point(result, max_rank: int) -> dict[str, float]:
    import numpy as np

    cmc = np.asarray(result.cmc, dtype=float)
    return {"mAP": float(result.mAP), "rank1": float(cmc[0]), "rank5": float(cmc[min(5, max_rank) - 1])}


def _sweep_veri(features, frame, alphas, configured, settings) -> dict[float, list]:
    """α -> [(RankResult, query vehicle ids)] (one trial) on VeRi's query/gallery split."""
    from agnet.evaluate import features_of
    from agnet.metrics import evaluate, pairwise_distance
    from agnet.protocols import veri_split

    query, gallery = veri_split(frame)
    q_ids, g_ids = query["vehicle_id"].to_numpy(), gallery["vehicle_id"].to_numpy()
    q_cams, g_cams = query["camera_id"].to_numpy(), gallery["camera_id"].to_numpy()
    gram = _gram(features_of(features, "Attr", query["path"]), features_of(features, "Attr", gallery["path"]),
                 features_of(features, "ID", query["path"]), features_of(features, "ID", gallery["path"]))
    out = {}
    for alpha in alphas:
        if alpha == configured:
            distmat = pairwise_distance(_direct(features, alpha, query["path"]), _direct(features, alpha, gallery["path"]),
                                        metric=settings.distance).numpy()
        else:
            distmat = _distance_at(gram, alpha, settings.distance)
        result = evaluate(distmat, q_ids, g_ids, q_cams, g_cams, max_rank=settings.max_rank, official_ap=True)
        out[alpha] = [(result, q_ids)]
    return out


def _sweep_vehicleid(features, frame, size, alphas, configured, settings) -> dict[float, list]:
    """α -> [(RankResult, query vehicle ids) per trial] on ``test_list_<size>`` (the records' seeded draws)."""
    from agnet.evaluate import features_of
    from agnet.metrics import evaluate, pairwise_distance
    from agnet.protocols import vehicleid_test, vehicleid_trial

    test = vehicleid_test(frame, size)
    ids = test["vehicle_id"].to_numpy()
    attr, ident = features_of(features, "Attr", test["path"]), features_of(features, "ID", test["path"])
    direct = _direct(features, configured, test["path"]) if configured in alphas else None
    out: dict[float, list] = {alpha: [] for alpha in alphas}
    for trial in range(settings.trials):
        q, g = vehicleid_trial(test, size, trial, settings.trial_seed)
        gram = _gram(attr[q], attr[g], ident[q], ident[g])
        for alpha in alphas:
            if alpha == configured:
                distmat = pairwise_distance(direct[q], direct[g], metric=settings.distance).numpy()
            else:
                distmat = _distance_at(gram, alpha, settings.distance)
            out[alpha].append((evaluate(distmat, ids[q], ids[g], max_rank=settings.max_rank), ids[q]))
    return out


def fold_of(vehicle_ids, seed: int, folds: int = CROSSFIT_FOLDS) -> dict[int, int]:
    """Vehicle id -> fold: a seeded permutation of the sorted distinct ids, dealt round-robin. It depends only on
    the *set* of ids, so relabelling vehicles among one fold leaves every fold as it was."""
    import numpy as np

    distinct = np.unique(np.asarray(vehicle_ids, dtype=np.int64))
    order = np.random.default_rng([int(seed), 0xA1FA]).permutation(len(distinct))
    return {int(distinct[i]): position % folds for position, i in enumerate(order)}


def crossfit(per_alpha: dict[float, list], configured: float, seed: int, folds: int = CROSSFIT_FOLDS
             ) -> dict[str, Any]:
    """Cross-fitted α of one protocol from each α's per-trial (RankResult, query ids): the α for fold k is the one
    with the best mean AP over the *other* folds' queries (ties: the smaller α); each query is scored at its fold's
    α. mAP over trials as the records (mean of the per-trial means over scored queries)."""
    import numpy as np

    alphas = sorted(per_alpha)
    trials = per_alpha[alphas[0]]
    fold = fold_of(np.concatenate([ids for _, ids in trials]), seed, folds)
    masks = [np.array([fold[int(v)] for v in ids], dtype=np.int64) for _, ids in trials]

    def fold_mean(alpha: float, members) -> float:
        """Mean over trials of the mean AP of the scored queries whose fold is in ``members``."""
        means = []
        for (result, _), mask in zip(per_alpha[alpha], masks, strict=True):
            ap = np.asarray(result.ap, dtype=np.float64)[np.isin(mask, members)]
            ap = ap[~np.isnan(ap)]
            means.append(float(ap.mean()) if len(ap) else math.nan)
        return float(np.nanmean(means)) if not all(math.isnan(m) for m in means) else math.nan

    chosen, records = {}, []
    for k in range(folds):
        others = [j for j in range(folds) if j != k]
        scores = {alpha: fold_mean(alpha, others) for alpha in alphas}
        finite = {a: s for a, s in scores.items() if not math.isnan(s)}
        if not finite:
            raise AgnetError(f"α cross-fitting: no scored query outside fold {k} (too few test vehicles)")
        chosen[k] = max(finite, key=lambda a: (finite[a], -a))
    per_trial = []
    for t, mask in enumerate(masks):
        ap = np.full(len(mask), np.nan)
        for k in range(folds):
            ap[mask == k] = np.asarray(per_alpha[chosen[k]][t][0].ap, dtype=np.float64)[mask == k]
        per_trial.append(float(np.nanmean(ap)) if (~np.isnan(ap)).any() else math.nan)
    for k in range(folds):
        vehicles = sum(1 for v in fold.values() if v == k)
        queries = int(sum((mask == k).sum() for mask in masks) // len(masks))
        records.append({"fold": k, "alpha": chosen[k], "chosen_on": [j for j in range(folds) if j != k],
                        "vehicles": vehicles, "queries": queries, "mAP": fold_mean(chosen[k], [k])})
    points = {alpha: float(np.mean([r.mAP for r, _ in per_alpha[alpha]])) for alpha in alphas}
    best = max(points, key=lambda a: (points[a], -a))
    return {"mAP": float(np.mean(per_trial)), "folds": records, "configured_alpha": configured,
            "configured_mAP": points.get(configured), "best_alpha": best, "best_mAP": points[best],
            "crossfit_seed": int(seed), "note": "best_alpha is tuned on the test queries it scores (optimistic)"}


def sweep_alpha(features: dict[str, Any], frame, protocols, sweep: dict[str, Any], configured: float,
                settings) -> dict[str, list]:
    """``{"alpha_sweep": [...], "alpha_crossfit": [...]}`` of one run (module docstring) from its loaded features
    (Attr and ID; nothing is extracted again), its manifest and the evaluate document's ``alpha_sweep``
    (:func:`sweep_settings`); ``settings`` is the run's :class:`agnet.evaluate.EvalSettings`."""
    import numpy as np

    from agnet.protocols import parse

    alphas = sorted({float(a) for a in sweep["alphas"]} | {float(configured)})
    bad = [a for a in alphas if not (math.isfinite(a) and 0.0 <= a <= 1.0)]
    if bad:
        raise AgnetError(f"alpha_sweep: every α must be a finite number in [0, 1], got {bad[0]}")
    points, fits = [], []
    for protocol in protocols:
        parsed = parse(protocol)
        if parsed.reranked:
            continue
        if parsed.format == "veri":
            per_alpha = _sweep_veri(features, frame, alphas, float(configured), settings)
        else:
            per_alpha = _sweep_vehicleid(features, frame, parsed.test_size, alphas, float(configured), settings)
        for alpha in alphas:
            trials = [_point(result, settings.max_rank) for result, _ in per_alpha[alpha]]
            points.append({"alpha": alpha, "protocol": protocol,
                           **{key: float(np.array([t[key] for t in trials]).mean()) for key in ("mAP", "rank1", "rank5")}})
        fits.append({"protocol": protocol, **crossfit(per_alpha, float(configured),
                                                      sweep.get("crossfit_seed", CROSSFIT_SEED),
                                                      sweep.get("crossfit_folds", CROSSFIT_FOLDS))})
    return {"alpha_sweep": points, "alpha_crossfit": fits}


def run_sweep(features: dict[str, Any], frame, chosen: dict[str, Any], settings) -> dict[str, list]:
    """What ``agnet evaluate`` adds to metrics.json: the sweep of the evaluate document ``chosen`` (its
    ``settings``), or nothing when it holds none."""
    sweep = chosen.get("alpha_sweep")
    if not sweep or "alpha" not in chosen:
        return {}
    return sweep_alpha(features, frame, chosen["protocols"], sweep, chosen["alpha"], settings)


# ------------------------------------------------------------------------------------------ reading


def _number_in(value: Any, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high


def check_sweep(data: dict[str, Any], path: str | Path) -> None:
    """Refuse a metrics file whose ``alpha_sweep`` / ``alpha_crossfit`` (optional) is malformed; the error names the
    file, the entry and the field."""
    from agnet.protocols import parse

    sweep = data.get("alpha_sweep")
    if sweep is None and "alpha_crossfit" not in data:
        return
    if not isinstance(sweep, list) or not sweep:
        raise AgnetError(f"{path}: alpha_sweep must be a non-empty list of {{{', '.join(SWEEP_KEYS)}}}, got "
                         f"{str(sweep)[:60]!r}")
    for i, entry in enumerate(sweep):
        if not isinstance(entry, dict):
            raise AgnetError(f"{path}: alpha_sweep[{i}] is not a mapping")
        absent = [k for k in SWEEP_KEYS if k not in entry]
        if absent:
            raise AgnetError(f"{path}: alpha_sweep[{i}] lacks {', '.join(absent)}")
        for key in ("alpha", "mAP", "rank1", "rank5"):
            if not _number_in(entry[key], 0.0, 1.0):
                raise AgnetError(f"{path}: alpha_sweep[{i}].{key} must be a number in [0, 1], got {entry[key]!r}")
        try:
            parse(entry["protocol"])
        except AgnetError as error:
            raise AgnetError(f"{path}: alpha_sweep[{i}].protocol: {error}") from None
    seen = [(entry["protocol"], entry["alpha"]) for entry in sweep]
    if len(set(seen)) != len(seen):
        raise AgnetError(f"{path}: alpha_sweep holds an (α, protocol) twice")
    fits = data.get("alpha_crossfit")
    if not isinstance(fits, list):
        raise AgnetError(f"{path}: alpha_crossfit must be a list (one entry per swept protocol), got {str(fits)[:60]!r}")
    for i, fit in enumerate(fits):
        if not isinstance(fit, dict) or not isinstance(fit.get("protocol"), str):
            raise AgnetError(f"{path}: alpha_crossfit[{i}] must be a mapping naming its protocol")
        if not _number_in(fit.get("mAP"), 0.0, 1.0):
            raise AgnetError(f"{path}: alpha_crossfit[{i}].mAP must be a number in [0, 1], got {fit.get('mAP')!r}")
        folds = fit.get("folds")
        if not isinstance(folds, list) or not folds or not all(
                isinstance(f, dict) and _number_in(f.get("alpha"), 0.0, 1.0) for f in folds):
            raise AgnetError(f"{path}: alpha_crossfit[{i}].folds must be a non-empty list of folds each with an "
                             f"'alpha' in [0, 1], got {str(folds)[:60]!r}")


# ------------------------------------------------------------------------------------------ report settings

ALS_BASELINE = "agnet_asl"
ALS_CONSTANTS = ("theta", "alpha", "beta")


def als_variants(config: dict[str, Any], baseline: str = ALS_BASELINE) -> dict[str, dict[str, float]]:
    """The trained variants that differ from ``baseline`` only in the ALS constants θ, α, β (Eq. 7): variant ->
    its constants. Compared on the canonical training documents (:func:`agnet.settings.training_document`), so a
    variant that also changes anything else — the ALS pairs, a learning rate — is not a θ/α/β sensitivity arm."""
    from agnet.settings import training_document

    if baseline not in config["train_variants"]:
        return {}
    base = training_document(config, baseline)["settings"]
    found = {}
    for variant in config["train_variants"]:
        if variant == baseline:
            continue
        other = training_document(config, variant)["settings"]
        differ = {key for key in set(base) | set(other) if base.get(key) != other.get(key)}
        if differ != {"als"} or not base["als"] or not other["als"]:
            continue
        if {k: v for k, v in other["als"].items() if k not in ALS_CONSTANTS} != \
                {k: v for k, v in base["als"].items() if k not in ALS_CONSTANTS}:
            continue
        found[variant] = {key: float(other["als"][key]) for key in ALS_CONSTANTS}
    return found


def report_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What the ``report/sensitivity`` job reads beyond the datasets shown: the configured α (None when All is not
    evaluated), and the ALS arms (:func:`als_variants`) with the baseline's constants."""
    from agnet.settings import training_document

    evaluation = config["evaluation"]
    alpha = float(evaluation["alpha"]) if "All" in evaluation["descriptors"] else None
    trained = ALS_BASELINE in config["train_variants"]
    base = training_document(config, ALS_BASELINE)["settings"]["als"] if trained else None
    return {"alpha": alpha,
            "als": {"baseline": ALS_BASELINE if trained else None,
                    "baseline_constants": {k: float(base[k]) for k in ALS_CONSTANTS} if base else None,
                    "variants": als_variants(config)}}
