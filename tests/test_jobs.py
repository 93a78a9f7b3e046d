"""fawkes_fast.jobs without models: planning, writing, interrupts and the report (a fake cloaker)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from fawkes_fast.jobs import (Interrupted, Job, SaveOptions, check_report_path, cloak_jobs, plan_jobs,
                              save_result, write_report)


@dataclass
class FakeResult:
    image: np.ndarray | None
    status: str
    error: str | None = None
    faces: list = field(default_factory=list)
    encoded: bytes | None = None
    info: object = None


class FakeCloaker:
    """Cloaks a photo named *face* by inverting it; anything else has no face."""

    def __init__(self, interrupt_on_call: int | None = None):
        self.calls: list[list] = []
        self.interrupt_on_call = interrupt_on_call

    def cloak(self, sources, **kw):
        self.calls.append(list(sources))
        if self.interrupt_on_call == len(self.calls):
            raise KeyboardInterrupt
        out = []
        for s in sources:
            rgb = np.asarray(Image.open(s).convert("RGB"))
            out.append(FakeResult(255 - rgb, "cloaked") if "face" in s.name else
                       FakeResult(None, "no_face", "no face found"))
        return out


def _photo(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def test_same_names_get_unique_outputs_never_an_input(tmp_path):
    srcs = [_photo(tmp_path / d / "face.png", v) for d, v in (("a", 10), ("b", 20), ("c", 30))]
    victim = _photo(tmp_path / "a" / "face2_cloaked.png")  # an input named like an output
    twin = _photo(tmp_path / "a" / "face2.png")
    jobs = plan_jobs(srcs + [twin, victim], tmp_path / "out", overwrite=True)
    outputs = [j.output for j in jobs]
    assert len(set(outputs)) == 5 and victim not in outputs
    rows = cloak_jobs(FakeCloaker(), jobs, SaveOptions(overwrite=True), batch_size=2)
    assert [r["status"] for r in rows] == ["cloaked"] * 5
    for src, out in zip(srcs, outputs):  # each output is its own input's cloak: nothing lost
        assert (np.asarray(Image.open(out)) == 255 - np.asarray(Image.open(src))).all()
    beside = plan_jobs([twin, victim], overwrite=True)  # face2's usual output name is an input
    assert re.fullmatch(r"face2_cloaked_[0-9a-f]{8}\.png", beside[0].output.name)
    # a rerun with fewer inputs keeps each input's output name: finished photos stay `exists`
    assert [j.output for j in plan_jobs(srcs[:2], tmp_path / "out")] == outputs[:2]
    assert [j.status for j in plan_jobs(srcs[:2], tmp_path / "out")] == ["exists", "exists"]


def test_folder_rows_for_every_file(tmp_path):
    root = tmp_path / "in"
    _photo(root / "face.png")
    _photo(root / "old_cloaked.png")
    (root / "notes.txt").write_text("x")
    _photo(tmp_path / "elsewhere" / "face3.png")
    os.symlink(tmp_path / "elsewhere", root / "link")
    jobs = plan_jobs([root, root / "face.png"])
    by_name = {j.source.name: j for j in jobs}
    assert set(by_name) == {"face.png", "old_cloaked.png", "notes.txt", "link"}
    assert by_name["old_cloaked.png"].status == "skipped" and "cloaked" in by_name["old_cloaked.png"].reason
    assert by_name["notes.txt"].status == "skipped" and ".txt" in by_name["notes.txt"].reason
    assert by_name["link"].status == "skipped" and "symlink" in by_name["link"].reason
    assert [j.status for j in jobs if j.source.name == "face.png"] == [None, "skipped"]  # a duplicate


def test_rerun_reports_exists_and_does_the_rest(tmp_path):
    a, b = _photo(tmp_path / "face_a.png"), _photo(tmp_path / "face_b.png")
    cloak_jobs(FakeCloaker(), plan_jobs([a]), SaveOptions())
    cloaker = FakeCloaker()
    rows = cloak_jobs(cloaker, plan_jobs([a, b]), SaveOptions())
    assert [r["status"] for r in rows] == ["exists", "cloaked"]
    assert cloaker.calls == [[b]] and rows[0]["output"].endswith("face_a_cloaked.png")


def test_unwritable_output_is_found_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    jobs = plan_jobs([_photo(tmp_path / "face.png")], blocker / "out")
    assert jobs[0].status == "error" and "not a folder" in jobs[0].reason
    cloaker = FakeCloaker()
    rows = cloak_jobs(cloaker, jobs, SaveOptions())
    assert cloaker.calls == [] and rows[0]["status"] == "error" and rows[0]["error"]


def test_never_writes_twice_to_one_path(tmp_path):
    src = _photo(tmp_path / "face.png")
    out = tmp_path / "o.png"
    protect = set()
    result = FakeResult(np.zeros((8, 8, 3), np.uint8), "cloaked")
    options = SaveOptions(overwrite=True)
    assert save_result(Job(src, out), result, options, protect)["status"] == "cloaked"
    row = save_result(Job(src, out), FakeResult(np.ones((8, 8, 3), np.uint8), "cloaked"), options, protect)
    assert row["status"] == "error" and (np.asarray(Image.open(out)) == 0).all()
    row = save_result(Job(out, src), result, options, {src.resolve()})
    assert row["status"] == "error" and "refusing" in row["error"]


def test_interrupt_keeps_finished_photos_and_reports_the_rest(tmp_path):
    srcs = [_photo(tmp_path / f"face{i}.png") for i in range(5)]
    jobs = plan_jobs(srcs)
    seen = []
    with pytest.raises(Interrupted) as e:
        cloak_jobs(FakeCloaker(interrupt_on_call=3), jobs, SaveOptions(), batch_size=2, on_row=seen.append)
    rows = e.value.rows
    assert [r["status"] for r in rows] == ["cloaked"] * 4 + ["skipped"]
    assert rows[4]["reason"] == "interrupted before it was cloaked" and len(seen) == 4
    assert all(os.path.exists(r["output"]) for r in rows[:4])
    stop = iter([False, True])
    rows = cloak_jobs(FakeCloaker(), plan_jobs(srcs, overwrite=True), SaveOptions(overwrite=True),
                      batch_size=3, should_stop=lambda: next(stop))
    assert [r["status"] for r in rows] == ["cloaked"] * 3 + ["skipped"] * 2


def test_rows_time_only_cloaked_photos(tmp_path):
    rows = cloak_jobs(FakeCloaker(), plan_jobs([_photo(tmp_path / "face.png"), _photo(tmp_path / "wall.png")]),
                      SaveOptions())
    assert [r["status"] for r in rows] == ["cloaked", "no_face"]
    assert rows[0]["seconds"] is not None and rows[1]["seconds"] is None
    assert rows[1]["reason"] == "no face found" and rows[1]["error"] is None


def test_batch_size_must_be_positive(tmp_path):
    for bad in (0, -1):
        with pytest.raises(ValueError):
            cloak_jobs(FakeCloaker(), plan_jobs([_photo(tmp_path / "face.png")]), SaveOptions(), batch_size=bad)


def test_report_path_checked_and_written_atomically(tmp_path):
    src = _photo(tmp_path / "face.png")
    for bad, why in ((src, "image"), (tmp_path / "missing" / "r.json", "does not exist"), (tmp_path, "folder")):
        with pytest.raises(ValueError, match=why):
            check_report_path(bad, [src])
    renamed = tmp_path / "face.json"
    os.link(src, renamed)  # a hard link of an input, named like a report
    with pytest.raises(ValueError, match="input"):
        check_report_path(renamed, [src])
    report = tmp_path / "r.json"
    check_report_path(report, [src])
    write_report(report, [{"status": "cloaked", "dssim": np.float32(0.5)}])
    assert json.loads(report.read_text()) == [{"status": "cloaked", "dssim": 0.5}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.json", "face.png", "r.json"]


def test_symlink_loops_and_dangling_links_get_rows(tmp_path):
    """A symlink loop (Path.resolve raises RuntimeError on Python 3.11) or a link to nothing never
    aborts the run: in a folder it is skipped with the reason, named as an input it is an error row."""
    root = tmp_path / "in"
    _photo(root / "face.png")
    os.symlink("loop.jpg", root / "loop.jpg")
    os.symlink("pong.jpg", root / "ping.jpg")
    os.symlink("ping.jpg", root / "pong.jpg")
    os.symlink("gone.jpg", root / "dangling.jpg")
    jobs = plan_jobs([root, root / "loop.jpg", root / "dangling.jpg"], tmp_path / "out")
    rows = cloak_jobs(FakeCloaker(), jobs, SaveOptions())
    by_name = {}
    for r in rows:
        by_name.setdefault(os.path.basename(r["source"]), []).append((r["status"], r["reason"]))
    assert by_name["face.png"] == [("cloaked", None)]
    for name in ("loop.jpg", "ping.jpg", "pong.jpg"):
        assert by_name[name][0][0] == "skipped" and "symlink loop" in by_name[name][0][1]
    assert by_name["dangling.jpg"][0][0] == "skipped" and "gone.jpg" in by_name["dangling.jpg"][0][1]
    # the same links named explicitly: errors (the file asked for cannot be read), still one row each
    assert by_name["loop.jpg"][1][0] == "error" and "symlink loop" in by_name["loop.jpg"][1][1]
    assert by_name["dangling.jpg"][1][0] == "error" and "gone.jpg" in by_name["dangling.jpg"][1][1]
    report = tmp_path / "r.json"
    check_report_path(report, [j.source for j in jobs])
    write_report(report, rows, protect=[j.source for j in jobs])
    assert len(json.loads(report.read_text())) == len(jobs) == 7
