"""`fawkes-fast evaluate` end to end on three LFW photos cloaked with a few steps."""
from __future__ import annotations

import json

import pytest

from conftest import lfw_image


@pytest.fixture(scope="module")
def photo_dirs(lfw_dir, tmp_path_factory):
    from fawkes_fast import Cloaker
    from fawkes_fast.io.images import load_image
    from PIL import Image

    root = tmp_path_factory.mktemp("user")
    orig, clo = root / "original", root / "cloaked"
    orig.mkdir(); clo.mkdir()
    srcs = [lfw_image("Bill_Gates", i) for i in (1, 2, 3)]
    for i, s in enumerate(srcs):
        Image.fromarray(load_image(str(s))).save(orig / f"me{i}.jpg", quality=95)
    res = Cloaker("mid").cloak([str(orig / f"me{i}.jpg") for i in range(3)], seed=0, steps=10, format="png")
    for i, r in enumerate(res):
        assert r.status == "cloaked", r.error
        (clo / f"me{i}_cloaked.png").write_bytes(r.encoded)
    return orig, clo


def test_evaluate_cli_prints_table_and_writes_reports(photo_dirs, tmp_path, capsys):
    from fawkes_fast.cli import main

    orig, clo = photo_dirs
    html, md, js = tmp_path / "report.html", tmp_path / "report.md", tmp_path / "r.json"
    assert main(["evaluate", "--original", str(orig), "--cloaked", str(clo), "--report", str(html),
                 "--json", str(js), "--population", "40"]) == 0
    out = capsys.readouterr().out
    assert "3 photo pairs" in out and "protection LOO" in out
    text = html.read_text()
    assert text.count("data:image/jpeg;base64,") == 6 and "data:image/png;base64," in text
    r = json.loads(js.read_text())["results"][0]
    assert r["extractor"] == "dlib" and r["photos"] == 3 and r["population"] == 40
    for k in ("protection_loo", "protection_same", "protection_match"):  # shares of the 3 originals
        assert r[k] * 3 == pytest.approx(round(r[k] * 3)), (k, r[k])
    assert r["protection_loo"] == pytest.approx(1 - sum(r["recognised_loo"]) / 3)
    assert len(r["shift"]) == 3 and all(s > 0 for s in r["shift"])

    assert main(["evaluate", "--original", str(orig), "--cloaked", str(clo), "--report", str(md),
                 "--population", "40"]) == 0
    assert "![feature shift](report_files/shift.png)" in md.read_text()
    assert (tmp_path / "report_files" / "0_cloaked.jpg").is_file()


def test_evaluate_unmatched_folders_fail_cleanly(tmp_path, capsys):
    from fawkes_fast.cli import main

    (tmp_path / "a").mkdir(); (tmp_path / "b").mkdir()
    assert main(["evaluate", "--original", str(tmp_path / "a"), "--cloaked", str(tmp_path / "b")]) == 2
    assert "no photo" in capsys.readouterr().err
