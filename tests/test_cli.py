"""`fawkes-fast cloak`: naming, safety, metadata, exit codes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import lfw_image

from fawkes_fast.cli import main

FAST = ["--seed", "0", "-q"]


@pytest.fixture()
def photos(tmp_path, lfw_dir):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(lfw_image("Aaron_Sorkin", 1), src / "a.jpg")
    shutil.copy(lfw_image("Abdullah_Gul", 2), src / "sub" / "b.jpg")
    return src


@pytest.fixture(autouse=True)
def few_steps(monkeypatch):
    import fawkes_fast.optimize.modes as modes

    monkeypatch.setitem(modes.MODES, "mid", modes.MODES["mid"].with_options(steps=3))


def test_folder_recurses_and_writes_next_to_inputs(photos, tmp_path):
    report = tmp_path / "r.json"
    assert main(["cloak", str(photos), "--json", str(report)] + FAST) == 0
    assert (photos / "a_cloaked.png").is_file() and (photos / "sub" / "b_cloaked.png").is_file()
    rows = json.loads(report.read_text())
    assert [r["status"] for r in rows] == ["cloaked", "cloaked"]
    assert all(r["faces"][0]["dssim"] <= 0.007 * 1.02 for r in rows)


def test_output_dir_mirrors_and_never_overwrites(photos, tmp_path):
    out = tmp_path / "out"
    assert main(["cloak", str(photos), "-o", str(out)] + FAST) == 0
    first = (out / "a_cloaked.png").read_bytes()
    assert (out / "sub" / "b_cloaked.png").is_file()
    # a second run must not clobber without --overwrite, and says so with a non-zero exit
    assert main(["cloak", str(photos / "a.jpg"), "-o", str(out)] + FAST) == 1
    assert (out / "a_cloaked.png").read_bytes() == first
    assert main(["cloak", str(photos / "a.jpg"), "-o", str(out), "--overwrite"] + FAST) == 0


def test_input_is_never_overwritten(photos):
    victim = photos / "x_cloaked.png"  # an input whose name is what an output would be called
    shutil.copy(photos / "a.jpg", photos / "x.jpg")
    Image.open(photos / "a.jpg").save(victim)
    before = victim.read_bytes()
    assert main(["cloak", str(photos / "x.jpg"), str(victim), "--overwrite"] + FAST) == 1
    assert victim.read_bytes() == before


def test_unwritable_output_dir_reports_and_fails(photos, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert main(["cloak", str(photos / "a.jpg"), "-o", str(blocker / "out")] + FAST) == 1
    assert (photos / "a.jpg").is_file()


def test_metadata_stripped_unless_kept_and_orientation_honoured(tmp_path, lfw_dir):
    img = Image.open(lfw_image("Aaron_Sorkin", 1)).transpose(Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated; a viewer turns it upright
    exif[0x010F] = "TestCam"
    src = tmp_path / "rot.jpg"
    img.save(src, exif=exif.tobytes(), quality=95)
    assert main(["cloak", str(src)] + FAST) == 0
    out = Image.open(tmp_path / "rot_cloaked.png")
    assert not out.getexif()
    assert out.size == (250, 250)
    upright = np.asarray(Image.open(lfw_image("Aaron_Sorkin", 1)).convert("RGB")).astype(int)
    assert np.abs(np.asarray(out.convert("RGB")).astype(int) - upright).mean() < 6
    assert main(["cloak", str(src), "--keep-metadata", "--overwrite"] + FAST) == 0
    kept = Image.open(tmp_path / "rot_cloaked.png").getexif()
    assert kept.get(0x010F) == "TestCam" and kept.get(0x0112, 1) == 1


def test_no_face_and_bad_file_statuses(tmp_path):
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(tmp_path / "wall.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    assert main(["cloak", str(tmp_path / "wall.png")] + FAST) == 0
    assert not (tmp_path / "wall_cloaked.png").exists()
    assert main(["cloak", str(tmp_path / "broken.jpg"), str(tmp_path / "wall.png")] + FAST) == 1


def test_transfer_options_reach_the_cloaker(monkeypatch, tmp_path):
    """--diversity/--flip become Cloaker options (validated there); absent, the mode's defaults stay."""
    import fawkes_fast.cloaker as cloaker_mod

    seen = {}

    class Spy(cloaker_mod.Cloaker):
        def __init__(self, *a, **kw):
            seen.update(kw)
            super().__init__(*a, **kw)

    import fawkes_fast

    monkeypatch.setattr(cloaker_mod, "Cloaker", Spy)
    monkeypatch.setattr(fawkes_fast, "Cloaker", Spy, raising=False)  # the lazy attribute may be cached
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    main(["cloak", str(bad), "--diversity", "0.5", "--flip", "-q"])
    assert seen["diversity"] == 0.5 and seen["flip"] is True
    seen.clear()
    main(["cloak", str(bad), "-q"])
    assert "diversity" not in seen and "flip" not in seen
