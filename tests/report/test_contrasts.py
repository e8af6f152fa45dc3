"""The ablation arms' one-factor contrasts: measured where both variants ran, paired by seed, tested two-sided."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from agnet.report.contrasts import BASELINE_CONTRASTS, CONTRASTS, markdown, measure
from tests.report.test_claims import runs


def table(gaps: dict[str, dict[int, float]], protocols=("vehicleid-10",)):
    rows = []
    for variant, per_seed in gaps.items():
        for protocol in protocols:
            rows.append(("vid-x", variant, "All", protocol, per_seed))
    return runs(rows)


def test_each_contrast_is_one_factor_of_the_configured_variants():
    """Every contrast pairs variants whose training settings differ in exactly the factor it names."""
    from agnet.config import load_config
    from agnet.settings import training_document

    config = load_config("config.yaml")
    config["train_variants"] = list(config["variants"])
    for contrast in CONTRASTS:
        a = training_document(config, contrast.a)["settings"]
        b = training_document(config, contrast.b)["settings"]
        differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        assert differing, contrast
        expected = {"attribute-supervision": ["loss_weights"],
                    "attribute-negatives": ["hard_negative_fraction"],
                    "als-smoothing": ["als", "verification_loss"],
                    "als-attribute-term": ["als"]}[contrast.id]
        assert differing == expected, (contrast.id, differing)


def test_each_baseline_contrast_changes_only_what_agnet_adds_to_bot():
    """BoT+Attr − BoT: the AGNet network (attribute branch, guided ID branch with its embedding layer) and the
    colour/type losses; BoT+ALS − BoT+Attr: the ALS verification term and the hard pairs it is trained on. Every
    BoT trick (stride, BNNeck, smoothing, triplet, warm-up, erasing, P x K, Adam, input, schedule) is common."""
    from agnet.config import load_config
    from agnet.settings import training_document

    config = load_config("config.yaml")
    docs = {v: training_document(config, v)["settings"] for v in ("bot", "bot_attr", "bot_als")}
    expected = {"bot-attr": ["architecture", "embedding_dim", "loss_weights"],
                "bot-attr-id": ["architecture", "embedding_dim", "loss_weights"],
                "bot-als": ["als", "hard_negative_fraction", "loss_weights", "verification_loss"],
                "bot-attr-als": ["als", "architecture", "embedding_dim", "hard_negative_fraction", "loss_weights",
                                 "verification_loss"]}
    for contrast in BASELINE_CONTRASTS:
        a, b = docs[contrast.a], docs[contrast.b]
        assert sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)) == expected[contrast.id], contrast.id
        assert a["loss_weights"]["category"] == b["loss_weights"]["category"]  # the ID loss weighs the same
    assert docs["bot_attr"]["loss_weights"]["verify"] == docs["bot"]["loss_weights"]["verify"] == 0


def test_a_contrast_is_measured_only_where_both_variants_ran_and_paired_by_seed():
    seeds = {0: 0.50, 1: 0.60, 2: 0.55, 3: 0.65}
    higher = {s: v + 0.03 + 0.001 * s for s, v in seeds.items()}
    same = {s: v + (0.002 if s % 2 else -0.002) for s, v in higher.items()}
    measured = measure(table({"only_id": seeds, "agnet_ce_uniform": higher, "agnet_ce": same}))
    assert {m.contrast.id for m in measured} == {"attribute-supervision", "attribute-negatives"}
    supervision = [m for m in measured if m.contrast.id == "attribute-supervision"]
    assert [m.metric for m in supervision] == ["mAP", "Rank1"]
    m = supervision[0]
    d = np.array([100 * (higher[s] - seeds[s]) for s in seeds])
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert m.n == 4 and m.gap == pytest.approx(d.mean()) and (m.low, m.high) == (pytest.approx(d.mean() - half),
                                                                                  pytest.approx(d.mean() + half))
    assert m.verdict == "A higher" and m.p_family <= 2 * m.p_two + 1e-12
    negatives = next(m for m in measured if m.contrast.id == "attribute-negatives")
    assert negatives.verdict.startswith("no difference established (± ") and negatives.high > 0 > negatives.low
    lower = measure(table({"agnet_ce": seeds, "agnet_ce_uniform": higher}))
    assert all(m.verdict == "A lower" for m in lower)


def test_flagged_runs_are_not_judged_and_the_report_says_how_to_run_the_arms():
    seeds = {0: 0.5, 1: 0.6}
    flagged = table({"agnet_asl": seeds, "agnet_asl_shuffled": seeds}).assign(truncated=True)
    assert all(m.verdict.startswith("not judged") for m in measure(flagged))
    text = "\n".join(markdown([]))
    assert "list `agnet_ce_uniform` and `agnet_asl_shuffled` in `train_variants`" in text
    text = "\n".join(markdown(measure(table({"agnet_asl": seeds, "agnet_asl_shuffled": seeds}))))
    assert "| the attribute information in ALS (which pairs count as hard) (agnet_asl − agnet_asl_shuffled) |" in text


def test_with_per_query_results_the_test_set_widens_the_interval():
    from agnet.report.claims import QueryIndex

    rng = np.random.default_rng(3)
    vehicles = np.repeat(np.arange(30), 4)
    base = rng.uniform(0.2, 0.8, len(vehicles))
    frames, per_seed = [], {"agnet_ce": {}, "agnet_ce_uniform": {}}
    for seed in range(3):
        for variant, ap in (("agnet_ce", np.clip(base + 0.2 * np.isin(vehicles, [1, 2]) + 0.001 * seed, 0, 1)),
                            ("agnet_ce_uniform", base)):
            frames.append(pd.DataFrame({"dataset": "vid-x", "variant": variant, "seed": seed, "descriptor": "All",
                                        "protocol": "vehicleid-10", "trial": 0, "query": np.arange(len(ap)),
                                        "vehicle_id": vehicles, "ap": ap, "first_match_rank": 1}))
            per_seed[variant][seed] = float(ap.mean())
    plain = measure(table(per_seed))[0]
    widened = measure(table(per_seed), QueryIndex(pd.concat(frames, ignore_index=True)))[0]
    assert plain.test_se is None and widened.test_se > 0.5
    assert widened.high - widened.low > 5 * (plain.high - plain.low)
