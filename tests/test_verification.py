"""LFW verification through the full pipeline on a 300-pair subset (the full run: bench/lfw_verification.py)."""
from __future__ import annotations

import pytest

from fawkes_fast.evaluate.verification import pair_distances, read_pairs, subset, ten_fold_accuracy


@pytest.fixture(scope="module")
def distances(lfw_dir):
    from fawkes_fast.pipeline import FacePipeline

    pairs = subset(read_pairs(lfw_dir / "pairs-dev.txt"), 300)
    return pair_distances(FacePipeline(("dlib", "sface"), device="cpu"), pairs, lfw_dir)


@pytest.mark.parametrize("k,name", [(0, "dlib"), (1, "sface")])
def test_verification_accuracy_on_300_pairs(distances, k, name):
    dist, same, missing = distances
    acc, _ = ten_fold_accuracy(dist[k], same)
    print(f"{name}: {acc:.4f} on {len(same)} pairs, {missing} photos without a face")
    assert acc >= 0.97, (name, acc)


def test_ten_fold_counts_missing_faces_as_wrong():
    import numpy as np

    dist = np.array([0.1, 0.2, np.inf, 0.9, 1.0, 1.1] * 5)
    same = np.array([True, True, True, False, False, False] * 5)
    acc, _ = ten_fold_accuracy(dist, same)
    assert acc == pytest.approx(25 / 30)


def test_read_pairs_parses_both_kinds(tmp_path):
    f = tmp_path / "pairs.txt"
    f.write_text("# header\nA 1 2\nA 1 B 3\n")
    pairs = read_pairs(f)
    assert [p.same for p in pairs] == [True, False]
    assert pairs[1].b == ("B", 3)
