"""The bad-input catalogue: every bad file gets a status and the batch goes on."""
from __future__ import annotations

import io
import resource

import numpy as np
import pytest
from PIL import Image

from conftest import lfw_image, lfw_people

fawkes_fast = pytest.importorskip("fawkes_fast")

FAST = dict(steps=3, seed=0)  # behaviour, not protection, is under test here


@pytest.fixture(scope="module")
def cloaker():
    return fawkes_fast.Cloaker(mode="mid", device="cpu")


@pytest.fixture(scope="module")
def face(lfw_dir) -> np.ndarray:
    return np.asarray(Image.open(lfw_image("Aaron_Sorkin", 1)).convert("RGB"))


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_bad_files_get_error_status_and_batch_goes_on(cloaker, face, tmp_path, lfw_dir):
    good = lfw_image("Aaron_Sorkin", 1)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:2000])
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50)
    (tmp_path / "notes.txt").write_text("not an image")
    bad = [tmp_path / n for n in ("empty.jpg", "trunc.jpg", "corrupt.png", "notes.txt", "missing.jpg")]
    results = cloaker.cloak(bad[:2] + [good] + bad[2:], **FAST)
    statuses = [r.status for r in results]
    assert statuses == ["error", "error", "cloaked", "error", "error", "error"]
    for r in results:
        if r.status == "error":
            assert r.error and r.image is None


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "CMYK", "P", "GIF"])
def test_odd_modes_are_converted(cloaker, face, mode):
    img = Image.fromarray(face)
    if mode == "I;16":
        data = _png(Image.fromarray((np.asarray(img.convert("L")).astype(np.uint16) * 257)))
    elif mode == "CMYK":
        data = _png(img.convert("CMYK"), format="JPEG", quality=95)
    elif mode == "GIF":  # animated: the first frame is cloaked
        frames = [img.convert("P"), Image.fromarray(255 - face).convert("P")]
        data = _png(frames[0], format="GIF", save_all=True, append_images=frames[1:])
    else:
        data = _png(img.convert(mode))
    (res,) = cloaker.cloak(data, **FAST)
    assert res.status == "cloaked", res.error
    assert res.image.shape == face.shape and res.image.dtype == np.uint8


def test_tiny_image_and_no_face(cloaker):
    rng = np.random.default_rng(0)
    one = np.zeros((1, 1, 3), np.uint8)
    noise = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
    results = cloaker.cloak([one, noise], **FAST)
    assert [r.status for r in results] == ["no_face", "no_face"]
    assert all(r.image is None for r in results)  # never a silent unchanged copy


def test_twelve_faces_and_a_face_cut_by_the_border(cloaker, lfw_dir):
    names = [n for n, _ in lfw_people(1)[:40]]
    tiles = [np.asarray(Image.open(lfw_image(n, 1)).convert("RGB"))[40:210, 40:210] for n in names]
    from fawkes_fast.faces.detect import FaceDetector

    det = FaceDetector()
    tiles = [t for t in tiles if len(det.detect(t)) == 1][:12]
    canvas = np.concatenate([np.concatenate(tiles[r * 4:(r + 1) * 4], axis=1) for r in range(3)], axis=0)
    (res,) = cloaker.cloak(canvas, **FAST)
    assert res.status == "cloaked", res.error
    assert len(res.faces) == 12
    # a face cut by the left border
    cut = np.asarray(Image.open(lfw_image("Aaron_Sorkin", 1)).convert("RGB"))[:, 95:]
    (res,) = cloaker.cloak(cut, **FAST)
    assert res.status == "cloaked", res.error
    assert res.faces[0].box[0] < 0 or res.faces[0].region[0] == 0


def test_fifty_megapixel_photo_memory_bounded(cloaker, face):
    big = np.asarray(Image.fromarray(face).resize((8200, 8200), Image.BILINEAR))  # 67 MP
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (res,) = cloaker.cloak(big, **FAST)
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert res.status == "cloaked", res.error
    assert res.image.shape == big.shape
    # the input itself is 200 MB; the cloak works on a capped crop, so growth stays a few copies
    assert peak_mb < 2000, peak_mb
    print(f"67 MP photo: peak RSS growth {peak_mb:.0f} MB")


# --- bad arguments: a clear error when the Cloaker is built or called, never one error row per photo

def test_bad_arguments_raise_when_the_cloaker_is_built(tmp_path):
    with pytest.raises(ValueError, match="'bogus'.*built-ins are dlib"):
        fawkes_fast.Cloaker(extractors=("bogus",))
    (tmp_path / "mine.onnx").write_bytes(b"not read yet")
    with pytest.raises(FileNotFoundError, match="mine.json"):
        fawkes_fast.Cloaker(extractors=(str(tmp_path / "mine.onnx"),))
    with pytest.raises(ValueError, match="ghost"):
        fawkes_fast.Cloaker(extractors=("sface",), ghost=0.1)
    fawkes_fast.Cloaker(extractors=("dlib", "sface"), ghost=0.1)  # dlib is thinned, SFace stays whole


def test_bad_call_arguments_raise_before_any_photo(cloaker, face):
    with pytest.raises(ValueError, match="Nobody_At_All"):
        cloaker.cloak(face, target="Nobody_At_All", **FAST)
    with pytest.raises(ValueError, match="ghost"):
        fawkes_fast.Cloaker(extractors=("sface",)).cloak(face, ghost=0.1, **FAST)


def test_batch_size_groups_photos_only_across_photos(face, monkeypatch):
    """Cloaker(batch_size=N): by default each photo's faces are optimised on their own whatever N (its
    pixels never depend on its batch-mates); with batch_across_photos=True, the faces of up to N
    consecutive photos of a call share one optimisation."""
    import fawkes_fast.cloaker as cloaker_mod

    sizes, real = [], cloaker_mod.optimise
    monkeypatch.setattr(cloaker_mod, "optimise", lambda exts, x0, *a, **k: sizes.append(len(x0)) or real(exts, x0, *a, **k))
    photos = [face, face.copy(), face.copy()]
    alone = fawkes_fast.Cloaker(batch_size=2).cloak(photos, steps=1, seed=0)
    assert sizes == [1, 1, 1]
    sizes.clear()
    fawkes_fast.Cloaker(batch_size=2, batch_across_photos=True).cloak(photos, steps=1, seed=0)
    assert sizes == [2, 1]
    one = fawkes_fast.Cloaker(batch_size=1).cloak(photos[:1], steps=1, seed=0)
    assert np.array_equal(alone[0].image, one[0].image)
