"""Leave-one-family-out evaluation (bench/lofo.py, issue #15): the plan, and a tiny end-to-end run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import lofo  # noqa: E402

from fawkes_fast.optimize.modes import settings_for  # noqa: E402


def test_each_family_is_kept_out_of_its_own_cloak():
    p = lofo.plan(["dlib", "sface", "facenet"], ["dlib", "dlib-robust", "sface", "facenet"])
    assert p == {"dlib": ["sface", "facenet"], "sface": ["dlib", "dlib-robust", "facenet"],
                 "facenet": ["dlib", "dlib-robust", "sface"]}
    assert lofo.plan(["dlib"], ["dlib-robust", "my.onnx"]) == {"dlib": ["my.onnx"]}  # a file: its own family


def test_scenarios_track_the_held_out_family_first_and_the_tradeoff_sweeps_rho():
    scs = lofo.lofo_scenarios(("dlib", "sface", "facenet"), ("dlib", "sface"), tradeoff=True)
    assert [s.name for s in scs] == [f"lofo_{f}_rho_{r}" for f in ("dlib", "sface", "facenet") for r in lofo.RHOS]
    for s in scs:
        held = s.name.split("_")[1]
        assert s.trackers[0] == held and sorted(s.trackers) == ["dlib", "facenet", "sface"]
        assert held not in [lofo.FAMILY[e] for e in s.cloak["extractors"]] and s.budget
        assert s.cloak["rho"] == float(s.name.rsplit("_", 1)[1])
    # a family with no extractor outside it gets no row rather than an uncloaked one
    assert [s.name for s in lofo.lofo_scenarios(("dlib", "sface"), ("dlib",))] == ["lofo_sface_paper"]


def test_joint_rows_see_every_family_and_overrides_reach_every_row():
    scs = lofo.lofo_scenarios(("dlib", "sface"), ("dlib", "sface"), tradeoff=True, rhos=(0.012,),
                              overrides={"colour_penalty": 0}, joint=True)
    assert [s.name for s in scs] == ["lofo_dlib_rho_0.012", "lofo_sface_rho_0.012", "joint_rho_0.012"]
    assert all(s.cloak["colour_penalty"] == 0 and s.cloak["rho"] == 0.012 for s in scs)
    assert scs[-1].cloak["extractors"] == ["dlib", "sface"] and scs[-1].trackers == ("dlib", "sface")
    row = {"scenario": {"name": "joint_rho_0.012", "trackers": ["dlib", "sface"], "cloak": scs[-1].cloak},
           "summary": {"dlib/logreg": {"protection_mean": 0.5, "protection_std": 0.1, "users": 2}},
           "cloak_seconds": 4.0, "cloaked_photos": 2}
    line = lofo.table([row]).splitlines()[-1]
    assert line.startswith("| — | dlib + sface | 0.012, colour caps off | — | dlib 50 ± 10%; sface — | 2 |")
    assert "| 2.00 |" in line


def test_joint_only_keeps_the_joint_rows_and_names_a_bounded_mode():
    scs = lofo.lofo_scenarios(lofo.FAMILIES, lofo.FAMILIES, mode="high", joint=True, held_out=False)
    assert [s.name for s in scs] == ["joint_high"] and scs[0].trackers == lofo.FAMILIES
    row = {"scenario": {"name": "joint_high", "trackers": list(lofo.FAMILIES), "cloak": scs[0].cloak},
           "summary": {}, "cloak_seconds": 9.0, "cloaked_photos": 1}
    assert "| `high` (jnd) |" in lofo.table([row])


def test_collect_orders_every_result_by_family_then_rho(tmp_path):
    def row(name, held, rho):
        trackers = ["dlib", "sface", "facenet"] if held is None else [held] + [f for f in lofo.FAMILIES if f != held]
        return {"scenario": {"name": name, "trackers": trackers, "cloak": {"extractors": ["x"], "mode": "paper",
                                                                          **({"rho": rho} if rho else {})}},
                "summary": {}, "cloak_seconds": 1.0, "cloaked_photos": 1}
    for name, held, rho in [("joint_rho_0.017", None, 0.017), ("lofo_sface_rho_0.012", "sface", 0.012),
                            ("lofo_dlib_rho_0.017", "dlib", 0.017), ("lofo_dlib_mid", "dlib", None),
                            ("lofo_facenet_mid", "facenet", None)]:
        (tmp_path / f"{name}.json").write_text(json.dumps(row(name, held, rho)))
    (tmp_path / "lofo.json").write_text("[]")  # a run's list of results is not a result
    names = [r["scenario"]["name"] for r in lofo.collected(tmp_path)]
    assert names == ["lofo_dlib_mid", "lofo_dlib_rho_0.017", "lofo_sface_rho_0.012", "lofo_facenet_mid",
                     "joint_rho_0.017"]
    assert lofo.main(["--collect", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "lofo_all.md").read_text().count("\n") == 2 + 5


@pytest.mark.slow
def test_tiny_run_writes_the_table(lfw_dir, tmp_path):
    args = ["--lfw", str(lfw_dir), "--users", "2", "--max-train", "3", "--population", "20", "--per-identity", "12",
            "--steps", "10", "--classifiers", "logreg,match", "--extractors", "dlib,sface", "--families", "dlib,sface",
            "--out", str(tmp_path)]
    assert lofo.main(args) == 0
    results = json.loads((tmp_path / "lofo.json").read_text())
    assert [r["scenario"]["name"] for r in results] == ["lofo_dlib_paper", "lofo_sface_paper"]
    for r in results:
        held = r["scenario"]["trackers"][0]
        assert r["scenario"]["cloak"]["extractors"] == (["sface"] if held == "dlib" else ["dlib"])
        assert r["cloaked_photos"] == 6 and r["cloak_seconds"] > 0
        for u in r["per_user"]:
            t = u["trackers"][held]
            assert t["queries"] >= 3 and t["user_train_features"] >= 2
            for c in ("logreg", "match"):  # a share of this user's clean queries
                assert t[c]["protection"] * t["queries"] == pytest.approx(round(t[c]["protection"] * t["queries"]))
            assert t["logreg"]["normal"] >= 0.8, "the tracker must still know the other identities"
        b = r["budget"]
        assert b["faces"] >= 6 and b["mean_de"] > 0 and 0 < b["box_dssim_max"] < 0.05
    rho = settings_for("paper").rho
    md = (tmp_path / "lofo.md").read_text()
    assert f"| dlib | sface | {rho} |" in md and f"| sface | dlib | {rho} |" in md
    # resumable: a second run reads the JSON back instead of cloaking again
    assert lofo.main(args) == 0 and json.loads((tmp_path / "lofo.json").read_text()) == results
