"""Smoke test of the protection harness (issue #5): native dlib tracker, one user, a few photos.

The population is restricted to 20 identities x 12 photos (features cached on disk after the
first run), the user uploads 4 photos and the cloak runs 10 steps, so it fits a busy CPU.
"""
from __future__ import annotations

import numpy as np
import pytest

from fawkes_fast.evaluate import countermeasures
from fawkes_fast.evaluate.protocol import MID, Config, Scenario, run_scenario, scenarios, split

USER = "Bill_Gates"  # 17 LFW photos


def _cfg(lfw_dir):
    return Config(lfw=str(lfw_dir), user_names=[USER], per_identity=12, max_train=4, population=20,
                  steps=10, classifiers=("logreg", "match"))


def test_split_is_seeded_and_70_30():
    a, b = split(20, "x", 0)
    assert len(a) == 14 and len(b) == 6 and not set(a) & set(b)
    assert (split(20, "x", 0)[0] == a).all() and not (split(20, "x", 1)[0] == a).all()


def test_scenarios_cover_the_matrix():
    s = scenarios()
    for n in ("uncloaked", "mid_dlib", "mid_sface", "mid_joint", "rho_0.002", "rho_0.017", "leak_0.5_sybil2",
              "cm_jpeg85", "cm_blur", "cm_noise", "cm_resize50", "detect_average_stop"):
        assert n in s


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
    for key in ("dlib/logreg", "dlib/match"):
        v = r["summary"][key]
        assert 0.0 <= v["protection_mean"] <= 1.0 and 0.0 <= v["normal_mean"] <= 1.0
        assert v["users"] == 1
    assert r["per_user"][0]["trackers"]["dlib"]["queries"] >= 3


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
    assert u["cloak_failed"] == 0 and u["target"] and u["dssim_max"] <= 0.007 + 1e-6
    d = cloaked["summary"]["dlib/detect"]
    assert 0.5 <= d["kmeans_separation"] <= 1.0 and 0.0 <= d["centroid_flag_cloaked"] <= 1.0
    # even 10 steps of a dlib cloak must not make the user *easier* to recognise
    assert cloaked["summary"]["dlib/logreg"]["protection_mean"] >= base["summary"]["dlib/logreg"]["protection_mean"]


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
