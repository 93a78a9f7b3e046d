"""`fawkes-fast cloak`: naming, safety, metadata, validation, interrupts, exit codes."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import lfw_image

from fawkes_fast.cli import main

FAST = ["--seed", "0", "-q"]
FEW_STEPS = "import fawkes_fast.optimize.modes as m; m.MODES['mid'] = m.MODES['mid'].with_options(steps=3)"


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


@pytest.fixture()
def cloak_calls(monkeypatch):
    """Records the sources of every Cloaker.cloak call."""
    import fawkes_fast.cloaker as cloaker_mod

    calls, real = [], cloaker_mod.Cloaker.cloak

    def spy(self, images, **kw):
        calls.append(list(images))
        return real(self, images, **kw)

    monkeypatch.setattr(cloaker_mod.Cloaker, "cloak", spy)
    return calls


def _rows(path):
    return json.loads(path.read_text())


def test_folder_recurses_and_writes_next_to_inputs(photos, tmp_path):
    report = tmp_path / "r.json"
    assert main(["cloak", str(photos), "--json", str(report)] + FAST) == 0
    assert (photos / "a_cloaked.png").is_file() and (photos / "sub" / "b_cloaked.png").is_file()
    rows = _rows(report)
    assert [r["status"] for r in rows] == ["cloaked", "cloaked"]
    assert all(r["faces"][0]["dssim"] <= 0.007 * 1.02 for r in rows)


def test_rerun_reports_exists_and_overwrite_replaces(photos, tmp_path, capsys, cloak_calls):
    out, report = tmp_path / "out", tmp_path / "r.json"
    assert main(["cloak", str(photos), "-o", str(out)] + FAST) == 0
    first = (out / "a_cloaked.png").read_bytes()
    assert (out / "sub" / "b_cloaked.png").is_file()
    capsys.readouterr()
    cloak_calls.clear()
    # a rerun is not a failure: finished photos are `exists`, untouched, and not cloaked again
    assert main(["cloak", str(photos / "a.jpg"), "-o", str(out), "--json", str(report)] + FAST) == 0
    assert [r["status"] for r in _rows(report)] == ["exists"] and cloak_calls == []
    printed = capsys.readouterr().out
    assert "--overwrite" in printed and "overwrite=True" not in printed
    assert (out / "a_cloaked.png").read_bytes() == first
    assert main(["cloak", str(photos / "a.jpg"), "-o", str(out), "--overwrite"] + FAST) == 0


def test_three_inputs_with_one_name_get_three_outputs(tmp_path, lfw_dir):
    srcs = []
    for folder, name in zip("abc", ("Aaron_Sorkin", "Abdullah_Gul", "Adam_Sandler")):
        (tmp_path / folder).mkdir()
        srcs.append(shutil.copy(lfw_image(name, 1), tmp_path / folder / "x.jpg"))
    report = tmp_path / "r.json"
    assert main(["cloak", *map(str, srcs), "-o", str(tmp_path / "out"), "--overwrite", "--json", str(report)] + FAST) == 0
    rows = _rows(report)
    assert [r["status"] for r in rows] == ["cloaked"] * 3 and len({r["output"] for r in rows}) == 3
    for src, row in zip(srcs, rows):  # each output is the cloak of its own input
        diff = np.abs(np.asarray(Image.open(row["output"]), int) - np.asarray(Image.open(src), int)).mean()
        assert diff < 6


def test_input_is_never_overwritten(photos):
    victim = photos / "x_cloaked.png"  # an input whose name is what an output would be called
    shutil.copy(photos / "a.jpg", photos / "x.jpg")
    Image.open(photos / "a.jpg").save(victim)
    before = victim.read_bytes()
    assert main(["cloak", str(photos / "x.jpg"), str(victim), "--overwrite"] + FAST) == 0
    assert victim.read_bytes() == before
    assert len(list(photos.glob("x_cloaked_????????.png"))) == 1 and (photos / "x_cloaked_cloaked.png").is_file()


def test_unwritable_output_dir_found_before_the_work(photos, tmp_path, cloak_calls):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    report = tmp_path / "r.json"
    assert main(["cloak", str(photos / "a.jpg"), "-o", str(blocker / "out"), "--json", str(report)] + FAST) == 1
    assert cloak_calls == []
    (row,) = _rows(report)
    assert row["status"] == "error" and "not a folder" in row["error"] and row["seconds"] is None
    assert (photos / "a.jpg").is_file()


@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--batch-size", "-1"], ["--batch-size", "x"],
                                  ["--quality", "0"], ["--quality", "101"], ["--seed", "-1"],
                                  ["--diversity", "nan"], ["--diversity", "2"], ["--device", "gpu"],
                                  ["--mode", "ultra"]])
def test_bad_arguments_are_usage_errors(photos, capsys, args):
    assert main(["cloak", str(photos / "a.jpg")] + args + FAST) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err
    assert not (photos / "a_cloaked.png").exists()


def test_cuda_without_cuda_is_a_usage_error(photos, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["cloak", str(photos / "a.jpg"), "--device", "cuda"] + FAST) == 2
    assert "CUDA" in capsys.readouterr().err


def test_ray_without_ray_is_a_usage_error(photos, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert main(["cloak", str(photos / "a.jpg"), "--ray", "-o", str(photos / "out")] + FAST) == 2
    err = capsys.readouterr().err
    assert "fawkes_fast[ray]" in err and "Traceback" not in err


def test_nothing_to_cloak_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["cloak", str(tmp_path)] + FAST) == 2
    out = capsys.readouterr()
    assert "notes.txt" in out.out and "no images to cloak" in out.err


def test_json_report_never_an_input_and_checked_first(photos, tmp_path, capsys, cloak_calls):
    before = (photos / "a.jpg").read_bytes()
    assert main(["cloak", str(photos / "a.jpg"), "--json", str(photos / "a.jpg")] + FAST) == 2
    assert (photos / "a.jpg").read_bytes() == before
    assert main(["cloak", str(photos / "a.jpg"), "--json", str(tmp_path / "missing" / "r.json")] + FAST) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cloak_calls == [] and not (photos / "a_cloaked.png").exists()


def test_folder_lists_every_file_with_a_row(photos, tmp_path):
    (photos / "notes.txt").write_text("x")
    Image.open(photos / "a.jpg").save(photos / "old_cloaked.png")
    os.symlink(photos / "sub", photos / "link")
    report = tmp_path / "r.json"
    assert main(["cloak", str(photos), "--json", str(report)] + FAST) == 0
    status = {os.path.basename(r["source"]): (r["status"], r["reason"]) for r in _rows(report)}
    assert status["a.jpg"][0] == status["b.jpg"][0] == "cloaked"
    assert status["notes.txt"][0] == status["old_cloaked.png"][0] == status["link"][0] == "skipped"
    assert "symlink" in status["link"][1]


def _exif_with_thumbnail(thumb: bytes) -> bytes:
    """EXIF whose IFD1 holds a JPEG thumbnail, as cameras and phones write it."""
    def ifd(entries, next_offset):
        body = b"".join(struct.pack("<HHI", tag, kind, count) + value for tag, kind, count, value in entries)
        return struct.pack("<H", len(entries)) + body + struct.pack("<I", next_offset)

    ifd0 = ifd([(0x010F, 2, 4, b"Cam\x00")], 26)  # Make, then IFD1 at offset 26
    ifd1 = ifd([(0x0201, 4, 1, struct.pack("<I", 56)), (0x0202, 4, 1, struct.pack("<I", len(thumb)))], 0)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd0 + ifd1 + thumb


def test_keep_metadata_never_keeps_previews_of_the_face(tmp_path, lfw_dir):
    face = Image.open(lfw_image("Aaron_Sorkin", 1)).convert("RGB")
    small = io.BytesIO()
    face.resize((80, 80)).save(small, "JPEG", quality=90)
    src = tmp_path / "phone.jpg"
    face.save(src, "MPO", save_all=True, append_images=[face.resize((120, 120))],
              exif=_exif_with_thumbnail(small.getvalue()), xmp=b"<x:xmpmeta>preview</x:xmpmeta>", quality=95)
    raw = Image.open(src)
    assert small.getvalue()[:400] in raw.info["exif"] and raw.n_frames == 2  # the input really has them
    assert main(["cloak", str(src), "--keep-metadata", "--format", "jpeg"] + FAST) == 0
    data = (tmp_path / "phone_cloaked.jpg").read_bytes()
    out = Image.open(io.BytesIO(data))
    assert out.getexif().get(0x010F) == "Cam"  # the metadata asked for is kept
    assert b"\xff\xd8\xff" not in out.info["exif"] and not out.getexif().get_ifd(-1)
    assert b"xmpmeta" not in data and b"MPF\x00" not in data and getattr(out, "n_frames", 1) == 1


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


def test_no_face_and_bad_file_statuses(tmp_path, capsys):
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(tmp_path / "wall.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    assert main(["cloak", str(tmp_path / "wall.png")] + FAST) == 0
    assert not (tmp_path / "wall_cloaked.png").exists()
    report = tmp_path / "r.json"
    assert main(["cloak", str(tmp_path / "broken.jpg"), str(tmp_path / "wall.png"), "--json", str(report)] + FAST) == 1
    rows = _rows(report)
    assert [r["status"] for r in rows] == ["error", "no_face"]
    assert [r["seconds"] for r in rows] == [None, None]  # no batch average for photos not cloaked


def test_demo_writes_the_cloak_and_a_side_by_side(tmp_path):
    assert main(["demo", "-o", str(tmp_path)] + FAST) == 0
    assert (tmp_path / "astronaut_cloaked.png").is_file()
    assert Image.open(tmp_path / "astronaut_side_by_side.png").size == (1024, 512)


def test_optimiser_options_reach_the_cloaker(monkeypatch, tmp_path):
    """--diversity/--flip/--blur-copy/--ghost/--momentum/--steps/--strength become Cloaker options (validated
    there); absent, the mode's defaults stay."""
    import fawkes_fast.cloaker as cloaker_mod

    seen = {}

    class Spy(cloaker_mod.Cloaker):
        def __init__(self, *a, **kw):
            seen.update(kw)
            super().__init__(*a, **kw)

    monkeypatch.setattr(cloaker_mod, "Cloaker", Spy)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    main(["cloak", str(bad), "--diversity", "0.5", "--flip", "--blur-copy", "1.5", "--ghost", "0.1",
          "--momentum", "0.99", "--steps", "60", "--strength", "2", "-q", "--batch-size", "3"])
    assert seen["diversity"] == 0.5 and seen["flip"] is True and seen["blur_copy"] == 1.5 and seen["batch_size"] == 3
    assert seen["ghost"] == 0.1 and seen["momentum"] == 0.99 and seen["steps"] == 60 and seen["strength"] == 2.0
    seen.clear()
    main(["cloak", str(bad), "-q"])
    assert not {"diversity", "flip", "blur_copy", "ghost", "momentum", "steps", "strength"} & set(seen)
    assert main(["cloak", str(bad), "--steps", "0"]) == 2  # a usage error, before any photo is read


def test_ctrl_c_keeps_finished_photos_writes_the_report_and_exits_130(tmp_path, lfw_dir):
    src, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    src.mkdir()
    for i in range(1, 9):
        shutil.copy(lfw_image("Abdullah_Gul", i), src / f"p{i}.jpg")
    code = f"import sys; {FEW_STEPS}; from fawkes_fast.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "cloak", str(src), "-o", str(out), "--batch-size", "1",
                             "--json", str(report), "-q", "--seed", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list(out.glob("*_cloaked.png")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "stopping after the current batch" in stderr
    rows = _rows(report)
    statuses = [r["status"] for r in rows]
    assert len(rows) == 8 and "cloaked" in statuses and statuses[-1] == "skipped"
    assert rows[-1]["reason"] == "interrupted before it was cloaked"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        os.path.basename(r["output"]) for r in rows if r["status"] == "cloaked")


# ----------------------------------------------------------------------------- issue #23: inputs

def test_symlink_loops_get_a_row_and_the_run_goes_on(tmp_path, capsys):
    """A looping or dangling symlink in a folder is `skipped` with the reason; named as a PATH it is an
    `error` row. Neither aborts the run (Path.resolve raises RuntimeError on a loop on Python 3.11)."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(src / "wall.png")
    os.symlink("loop.jpg", src / "loop.jpg")
    os.symlink("pong.jpg", src / "ping.jpg")
    os.symlink("ping.jpg", src / "pong.jpg")
    os.symlink("gone.jpg", src / "dangling.jpg")
    report = tmp_path / "r.json"
    assert main(["cloak", str(src), "-o", str(tmp_path / "out"), "--json", str(report)] + FAST) == 0
    status = {os.path.basename(r["source"]): (r["status"], r["reason"]) for r in _rows(report)}
    assert status["wall.png"][0] == "no_face"
    assert all(status[n][0] == "skipped" and "symlink loop" in status[n][1] for n in ("loop.jpg", "ping.jpg", "pong.jpg"))
    assert status["dangling.jpg"][0] == "skipped" and "gone.jpg" in status["dangling.jpg"][1]
    capsys.readouterr()
    assert main(["cloak", str(src / "loop.jpg"), str(src / "dangling.jpg"), str(src / "wall.png"),
                 "--json", str(report)] + FAST) == 1
    rows = _rows(report)
    assert [r["status"] for r in rows] == ["error", "error", "no_face"]
    assert "symlink loop" in rows[0]["error"] and "gone.jpg" in rows[1]["error"]
    assert "Traceback" not in capsys.readouterr().err


def test_summary_escapes_control_characters(tmp_path, capsys):
    """A file name with an ANSI escape or a newline cannot colour the terminal or break the table."""
    from fawkes_fast.cli.summary import print_summary

    names = ["red\x1b[31m.jpg", "two\nlines.jpg", "bidi\u202egpj.exe", "bad\udcff.jpg"]
    rows = [{"source": f"/x/{n}", "output": None, "status": "skipped", "reason": f"about {n}", "error": None,
             "seconds": None, "faces": []} for n in names]
    print_summary(rows)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\udcff" not in out
    assert "\\x1b[31m" in out and "two\\nlines.jpg" in out
    assert len(out.strip("\n").splitlines()) == 1 + 2 * len(names) + 1  # head, a row and a reason each, totals
    (tmp_path / "evil\x1b[31m\n.txt").write_text("x")  # end to end: a skipped file's row
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(tmp_path / "wall.png")
    assert main(["cloak", str(tmp_path)] + FAST) == 0
    assert "\x1b" not in capsys.readouterr().out


@pytest.mark.parametrize("flag, address", [(["--ray"], None), (["--ray", "auto"], "auto"),
                                           (["--ray", "10.0.0.1:6379"], "10.0.0.1:6379")])
def test_bare_ray_joins_or_starts_a_cluster(photos, tmp_path, monkeypatch, flag, address):
    """README: `--ray` alone joins RAY_ADDRESS's or this machine's cluster, or else starts one (Ray's
    address=None); `--ray auto` keeps Ray's meaning (a running cluster is required)."""
    import fawkes_fast.cli.cloak as cli_cloak

    seen = {}

    def fake_ray_run(jobs, options, **kw):
        seen.update(kw)
        return [cli_cloak.make_row(j, "skipped", "not run") for j in jobs]

    monkeypatch.setattr(cli_cloak, "cloak_jobs_on_ray", fake_ray_run)
    # `--ray` last, as the README writes it, and before a PATH
    assert main(["cloak", str(photos / "a.jpg"), "-o", str(tmp_path / "out")] + FAST + flag) == 0
    assert "address" in seen and seen["address"] == address
    if flag == ["--ray"]:
        seen.clear()
        assert main(["cloak", "--ray", "-o", str(tmp_path / "out"), str(photos / "a.jpg")] + FAST) == 0
        assert seen["address"] is None


# ----------------------------------------------------------------------------- issue #23: checks first

def _model_file(folder, spec=True, dim=128):
    from test_onnx_import import README_SPEC, face_model_file

    return face_model_file(folder, dim=dim, spec={**README_SPEC, "embedding_dim": 128} if spec else None)


@pytest.mark.parametrize("case", ["unknown extractor", "unknown target", "model without spec", "spec mismatch",
                                  "model file targeted", "ghost without dlib"])
def test_bad_arguments_are_checked_before_any_photo(photos, tmp_path, capsys, cloak_calls, case):
    """Each of these used to give one `error` row per photo and exit 1: they are usage errors (exit 2),
    found before any photo is cloaked, said in one line."""
    model = tmp_path / "models"
    model.mkdir()
    args, said = {
        "unknown extractor": lambda: (["--extractor", "bogus"], "bogus"),
        "unknown target": lambda: (["--target", "Nobody_At_All"], "Nobody_At_All"),
        "model without spec": lambda: (["--extractor", str(_model_file(model, spec=False)), "--target", "none"],
                                       "tiny.json"),
        "spec mismatch": lambda: (["--extractor", str(_model_file(model, dim=64)), "--target", "none"], "embedding_dim"),
        "model file targeted": lambda: (["--extractor", str(_model_file(model))], "target='none'"),
        "ghost without dlib": lambda: (["--extractor", "sface", "--ghost", "0.1"], "ghost"),
    }[case]()
    report = tmp_path / "r.json"
    assert main(["cloak", str(photos), "--json", str(report)] + args + FAST) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert cloak_calls == [] and not report.exists() and not (photos / "a_cloaked.png").exists()


def test_a_model_file_with_its_spec_cloaks_untargeted(photos, tmp_path):
    model = tmp_path / "models"
    model.mkdir()
    report = tmp_path / "r.json"
    assert main(["cloak", str(photos / "a.jpg"), "-o", str(tmp_path / "out"), "--extractor", str(_model_file(model)),
                 "--target", "none", "--json", str(report)] + FAST) == 0
    assert [r["status"] for r in _rows(report)] == ["cloaked"]


def test_ghost_thins_dlib_and_leaves_sface_whole(photos, tmp_path):
    """A joint dlib + SFace cloak with --ghost: dlib is thinned, SFace (an imported graph) stays whole;
    every photo used to fail."""
    report = tmp_path / "r.json"
    assert main(["cloak", str(photos / "a.jpg"), "-o", str(tmp_path / "out"), "--extractor", "dlib",
                 "--extractor", "sface", "--ghost", "0.1", "--json", str(report)] + FAST) == 0
    (row,) = _rows(report)
    assert row["status"] == "cloaked" and set(row["faces"][0]["distances"]) == {"dlib", "sface"}


def test_evaluate_report_without_matplotlib_fails_first(tmp_path, capsys, monkeypatch):
    """`evaluate --report` needs the `eval` extra: without matplotlib it says so (exit 2) before any work,
    where it used to do all the work, print the table, and then exit 1 without a report."""
    import fawkes_fast.evaluate.user_check as user_check

    calls = []
    monkeypatch.setattr(user_check, "check", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(ValueError("ran")))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    report = tmp_path / "report.html"
    assert main(["evaluate", "--original", str(tmp_path), "--cloaked", str(tmp_path), "--report", str(report)]) == 2
    err = capsys.readouterr().err
    assert 'fawkes_fast[eval]' in err and "matplotlib" in err and "Traceback" not in err
    assert calls == [] and not report.exists()


def test_person_gives_every_photo_one_target_across_batches(photos, tmp_path, monkeypatch):
    """--person: the first batch chooses (eq. 3 over its photos) and later batches keep its identity;
    one target per photo protected 78% where a shared one protected 97% (README "Modes")."""
    import fawkes_fast.optimize.modes as modes

    monkeypatch.setitem(modes.MODES, "mid", modes.MODES["mid"].with_options(steps=2))
    for seed in ("0", "1", "2"):  # seeds where the two photos alone choose different targets
        alone = tmp_path / f"alone{seed}.json"
        assert main(["cloak", str(photos), "-o", str(tmp_path / f"o{seed}"), "--batch-size", "1", "--seed", seed,
                     "-q", "--no-judge", "--json", str(alone)]) == 0
        if len({r["faces"][0]["target"] for r in _rows(alone)}) == 2:
            break
    else:
        pytest.skip("both photos chose the same target alone for every seed tried")
    shared = tmp_path / "shared.json"
    assert main(["cloak", str(photos), "-o", str(tmp_path / "p"), "--batch-size", "1", "--seed", seed, "-q",
                 "--no-judge", "--person", "me", "--json", str(shared)]) == 0
    rows = _rows(shared)
    assert [r["status"] for r in rows] == ["cloaked", "cloaked"]
    assert len({r["faces"][0]["target"] for r in rows}) == 1
