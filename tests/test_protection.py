"""Smoke test of the protection harness (issue #5): native dlib tracker, one user, a few photos.

The population is restricted to 20 identities x 12 photos (features cached on disk after the
first run), the user uploads 4 photos and the cloak runs 10 steps, so it fits a busy CPU.
"""
from __future__ import annotations

import numpy as np
import pytest

from fawkes_fast.evaluate import countermeasures
from fawkes_fast.evaluate.protocol import MID, Config, Scenario, run_scenario, scenarios, split
from fawkes_fast.optimize.modes import settings_for

USER = "Bill_Gates"  # 17 LFW photos


def _cfg(lfw_dir):
    return Config(lfw=str(lfw_dir), user_names=[USER], per_identity=12, max_train=4, population=20,
                  steps=10, classifiers=("logreg", "match"))


def test_split_is_seeded_and_70_30():
    a, b = split(20, "x", 0)
    assert len(a) == 14 and len(b) == 6 and not set(a) & set(b)
    assert (split(20, "x", 0)[0] == a).all() and not (split(20, "x", 1)[0] == a).all()


def test_each_scenario_is_what_its_name_says():
    from fawkes_fast.evaluate.trackers import TRACKERS

    s = scenarios()
    assert s["uncloaked"].cloak is None and s["mid_dlib"].cloak == MID
    assert s["mid_joint"].cloak["extractors"] == ["dlib", "sface"]
    for name, sc in s.items():
        assert set(sc.trackers) <= set(TRACKERS), name
        if name.startswith("rho_"):
            assert sc.cloak["rho"] == float(name[4:]), name
        if name.startswith("cm_"):
            assert sc.countermeasure == name[3:].removesuffix("_eot") in countermeasures.COUNTERMEASURES, name
            assert ("diversity" in sc.cloak) == name.endswith("_eot"), name
        if name.startswith("leak_"):
            assert sc.leak == float(name.split("_")[1]) and sc.sybil == (int(name[-1]) if "sybil" in name else 0), name
        assert not sc.sybil or sc.leak > 0, f"{name}: Sybil images are made per leaked photo"
        assert sc.detect == name.startswith("detect_"), name
    # no two names for the same experiment
    same = [(a, b) for a in s for b in s if a < b and s[a].cloak == s[b].cloak and s[a].trackers == s[b].trackers
            and (s[a].countermeasure, s[a].leak, s[a].sybil, s[a].detect, s[a].budget)
            == (s[b].countermeasure, s[b].leak, s[b].sybil, s[b].detect, s[b].budget)]
    assert not same


def test_cloak_cache_key_follows_every_file_that_shapes_a_cloak(tmp_path, monkeypatch):
    """Issue #12: ops, alignment, targets, kernels and shipped data decide a cloak's pixels too."""
    import fawkes_fast
    import fawkes_fast.models
    from fawkes_fast.evaluate.protocol import _engine_version

    shaping = ["fawkes_fast/cloaker.py", "fawkes_fast/ops.py", "fawkes_fast/faces/align.py",
               "fawkes_fast/targets/select.py", "fawkes_fast/optimize/engine.py", "fawkes_fast/evaluate/protocol.py",
               "csrc/ssim_cpu.cpp", "csrc/ssim_math.h", "models/target_bank.npz", "models/arcface_dlib5_template.json"]
    measuring = ["fawkes_fast/evaluate/report.py", "models/build_target_bank.py"]
    for rel in ["fawkes_fast/__init__.py"] + shaping + measuring:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    monkeypatch.setattr(fawkes_fast, "__file__", str(tmp_path / "fawkes_fast" / "__init__.py"))
    monkeypatch.setattr(fawkes_fast.models, "__path__", [str(tmp_path / "models")])
    base = _engine_version()
    for rel in shaping + measuring:
        f = tmp_path / rel
        f.write_text(f.read_text() + "changed\n")
        assert (_engine_version() != base) == (rel in shaping), rel
        f.write_text(f"# {rel}\n")
    assert _engine_version() == base


def test_cloak_cache_key_follows_the_weights(tmp_path):
    """Retrained weights under the same name must never reuse cached cloaks."""
    from fawkes_fast.evaluate.protocol import _models_version

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights two")
    assert _models_version([str(a)]) != _models_version([str(b)])
    assert _models_version([str(a)]) == _models_version([str(a)])


def test_countermeasures_keep_shape():
    x = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    for name in countermeasures.COUNTERMEASURES:
        y = countermeasures.apply(name, x)
        assert y.shape == x.shape and y.dtype == np.uint8


def _check_metrics(r):
    assert r["users"] == [USER] and len(r["per_user"]) == 1
    t = r["per_user"][0]["trackers"]["dlib"]
    assert t["queries"] >= 3
    for c in ("logreg", "match"):
        v = r["summary"][f"dlib/{c}"]
        assert v["users"] == 1 and v["protection_mean"] == t[c]["protection"] and v["protection_std"] == 0.0
        # a share of this user's clean queries, not of some other count
        assert t[c]["protection"] * t["queries"] == pytest.approx(round(t[c]["protection"] * t["queries"]))


@pytest.mark.slow
def test_uncloaked_user_is_recognised_then_cloaked_run_is_well_formed(lfw_dir):
    cfg = _cfg(lfw_dir)
    base = run_scenario(Scenario("uncloaked", None, ("dlib",)), cfg, log=lambda s: None)
    _check_metrics(base)
    # the harness can fail: clean uploads must leave the user recognised
    assert base["summary"]["dlib/logreg"]["protection_mean"] <= 0.10
    assert base["summary"]["dlib/match"]["protection_mean"] <= 0.10
    assert base["summary"]["dlib/logreg"]["normal_mean"] >= 0.8
    assert base["cloaked_photos"] == 0

    cloaked = run_scenario(Scenario("mid_dlib", MID, ("dlib",), detect=True), cfg, log=lambda s: None)
    _check_metrics(cloaked)
    u = cloaked["per_user"][0]
    assert cloaked["cloaked_photos"] == 4 and cloaked["cloak_seconds"] > 0
    assert u["cloak_failed"] == 0 and u["target"] and u["dssim_max"] <= settings_for(MID["mode"]).rho + 1e-6
    d = cloaked["summary"]["dlib/detect"]
    assert set(d) == {"centroid_threshold", "kmeans_separation", "centroid_flag_cloaked", "centroid_flag_clean_user"}
    assert d["centroid_flag_clean_user"] <= 0.5, "the user's clean photos sit with their own identity"
    # even 10 steps of a dlib cloak must not make the user *easier* to recognise
    assert cloaked["summary"]["dlib/logreg"]["protection_mean"] >= base["summary"]["dlib/logreg"]["protection_mean"]


def test_detection_tests_separate_clusters_and_flag_photos_near_centroids():
    """§8.2's tests on synthetic features: they must tell a planted cluster apart, and not a mixed one."""
    from fawkes_fast.evaluate.protocol import _detect_tests
    from fawkes_fast.evaluate.trackers import normalise

    rng = np.random.default_rng(0)
    centres = np.eye(16)[:6]  # six identities, equally far apart
    X = normalise(np.repeat(centres, 10, 0) + 0.05 * rng.normal(size=(60, 16)))
    y = np.repeat(np.arange(6), 10)
    user = 5
    clean = X[y == user][:5]
    on_target = normalise(centres[0] + 0.01 * rng.normal(size=(4, 16)))  # cloaks pulled onto one other identity
    d = _detect_tests(X, y, user, on_target, clean, seed=0)
    assert d["kmeans_separation"] == 1.0 and d["centroid_flag_cloaked"] == 1.0
    twins = normalise(centres[user] + 0.05 * rng.normal(size=(40, 16)))  # "cloaks" drawn like the clean photos
    mixed = _detect_tests(X, y, user, twins[:20], twins[20:], seed=0)
    assert mixed["kmeans_separation"] < 0.8 and mixed["centroid_flag_cloaked"] <= 0.2


def test_summary_goes_between_the_readme_markers(tmp_path):
    from fawkes_fast.evaluate.report import replace_block, summary_table

    r = {"scenario": {"name": "mid_dlib"}, "summary": {
        "dlib/logreg": {"protection_mean": 1.0, "protection_std": 0.0, "normal_mean": 0.992, "normal_std": 0.0},
        "dlib/match": {"protection_mean": 0.9, "protection_std": 0.1, "normal_mean": 0.99, "normal_std": 0.0}}}
    table = summary_table([r])
    assert "| `mid_dlib` | 100 ± 0% / 90 ± 10% | 99.2% |" in table and "sface" not in table
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- protection:begin -->\nold\n<!-- protection:end -->\nrest\n")
    assert replace_block(doc, "protection", table)
    text = doc.read_text()
    assert "old" not in text and table in text and text.startswith("intro") and text.endswith("rest\n")
    (tmp_path / "plain.md").write_text("no markers")
    assert not replace_block(tmp_path / "plain.md", "protection", table)
    old = {"mid_dlib": {"summary": {k: {**v, "protection_mean": 0.5} for k, v in r["summary"].items()}}}
    side = summary_table([r, {**r, "scenario": {"name": "new_row"}}], before=old, before_label="old budget")
    assert "| scenario | native dlib: logreg / matching | native dlib, old budget |" in side
    assert "| `mid_dlib` | 100 ± 0% / 90 ± 10% | 50 ± 0% / 50 ± 10% | 99.2% |" in side
    assert "| `new_row` | 100 ± 0% / 90 ± 10% | — | 99.2% |" in side
