"""The visibility judges (butteraugli, SSIMULACRA2) over a face, next to the photo's JPEG re-saves."""
from __future__ import annotations

import numpy as np
import pytest

from fawkes_fast.evaluate import judges


def _need_judges():
    gone = judges.missing()
    if gone:
        pytest.skip("visibility judges not installed: " + "; ".join(gone.values()))


def _photo():
    from skimage import data

    return data.astronaut()  # public-domain portrait shipped with scikit-image


ASTRONAUT_FACE = (170, 40, 270, 150)  # left, top, right, bottom: the face, by eye


def test_judges_rank_the_jpeg_resaves_in_order():
    _need_judges()
    rgb = _photo()
    vis = judges.judge_face(rgb, judges.jpeg_resave(rgb, 80), ASTRONAUT_FACE, qualities=(95, 80, 50))
    bu = [vis.resaves[q][0] for q in (95, 80, 50)]
    ss = [vis.resaves[q][1] for q in (95, 80, 50)]
    assert bu == sorted(bu) and bu[0] < bu[-1], bu  # lower quality: more visible
    assert ss == sorted(ss, reverse=True) and ss[0] > ss[-1], ss
    # the photo re-saved at q80 is judged exactly as the q80 re-save, so it reads as q80
    assert vis.butteraugli == pytest.approx(vis.resaves[80][0]) and vis.like() == 80
    assert "quality 80" in vis.words()


def test_identical_and_noisy_faces_are_read_against_the_resaves():
    _need_judges()
    rgb = _photo()
    same = judges.judge_face(rgb, rgb.copy(), ASTRONAUT_FACE, qualities=(95, 50))
    assert same.butteraugli == pytest.approx(0.0, abs=1e-6) and same.like() == 95
    assert same.words().startswith("no more visible")
    noisy = rgb.astype(np.int16) + np.random.default_rng(0).integers(-40, 41, rgb.shape)
    loud = judges.judge_face(rgb, noisy.clip(0, 255).astype(np.uint8), ASTRONAUT_FACE, qualities=(95, 50))
    assert loud.like() is None and loud.words().startswith("more visible than")
    pooled = judges.summary([same.as_dict(), loud.as_dict()])
    assert pooled["faces"] == 2 and pooled["resaves"]["50"]["share_within"] == 0.5


def test_face_window_grows_the_box_and_stays_inside_the_photo():
    assert judges.face_window((10, 20, 110, 120), 200, 300) == (0, 0, 140, 150)
    assert judges.face_window((100, 100, 150, 160), 1000, 1000, grow=0.2) == (90, 88, 160, 172)


def test_a_missing_judge_is_named(monkeypatch):
    monkeypatch.setattr(judges.shutil, "which", lambda name: None)
    assert "butteraugli" in judges.missing()
    with pytest.raises(RuntimeError, match="apt-get install butteraugli"):
        judges.require()


def test_a_cloak_call_reports_how_visible_each_face_is():
    _need_judges()
    import fawkes_fast

    (r,) = fawkes_fast.cloak([_photo()], mode="paper", seed=0, steps=3, judge=True, format="jpeg", quality=90)
    assert r.status == "cloaked"
    v = r.faces[0].visibility
    assert set(v["resaves"]) == {str(q) for q in judges.RESAVE_QUALITIES}
    assert v["butteraugli"] > 0 and 0 < v["ssimulacra2"] <= 100
    assert "JPEG quality" in v["in_words"]
