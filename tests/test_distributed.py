"""The Ray path (issue #13): the same files, rows and pixels as a local run; a stopped run resumes.

One local Ray cluster (2 CPUs, 2 actors of 1 CPU each) serves the whole module. The local run
uses two torch threads where each 1-CPU actor has one, and the Ray run is made on a busy machine:
a photo's pixels depend neither on the thread count nor on the load (issue #23).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import lfw_image, lfw_people

from fawkes_fast.jobs import INTERRUPTED, SaveOptions, cloak_jobs, plan_jobs

FAST = {"mode": "paper", "steps": 3}  # 3 steps of the DSSIM shape already change pixels  # Cloaker options reach the actors; a monkeypatched MODES would not
SEED, BATCH = 0, 4
FACE_PHOTOS = 20


@pytest.fixture(scope="module")
def photos(tmp_path_factory, lfw_dir):
    """20 LFW faces in two folders, a file that is not an image, and a photo without a face."""
    src = tmp_path_factory.mktemp("photos")
    for k, (name, _) in enumerate(lfw_people()[:FACE_PHOTOS]):
        folder = src / ("a" if k % 2 else "b")
        folder.mkdir(exist_ok=True)
        shutil.copy(lfw_image(name, 1), folder / f"{name}.jpg")
    (src / "broken.jpg").write_bytes(b"not an image at all")
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(src / "blank.png")
    return src


@pytest.fixture(scope="module")
def local_run(photos, tmp_path_factory):
    import torch

    from fawkes_fast import Cloaker

    out = tmp_path_factory.mktemp("local")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # each actor has 1
    try:
        rows = cloak_jobs(Cloaker(**FAST), plan_jobs([photos], out), SaveOptions(), seed=SEED, batch_size=16)
    finally:
        torch.set_num_threads(threads)
    return out, rows


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'fawkes_fast[ray]')")
    pytest.importorskip("ray.data")
    from fawkes_fast.distributed import workers_at_normal_priority

    # the actors use the tests' model cache (conftest sets it), never the user's
    with workers_at_normal_priority():
        ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"FAWKES_FAST_CACHE": os.environ["FAWKES_FAST_CACHE"]}})
    try:
        yield ray
    finally:
        ray.shutdown()


def on_ray(photos, out, **kwargs):
    from fawkes_fast.distributed import cloak_paths

    return cloak_paths([photos], out, actors=2, seed=SEED, batch_size=BATCH, **FAST, **kwargs)


def rounded(value, places: int = 4):
    """Floats rounded: CPU kernels are not batch-invariant, so a clean feature computed beside other
    photos differs in the 7th digit (the pixels, checked exactly, do not)."""
    if isinstance(value, float):
        return round(value, places)
    if isinstance(value, dict):
        return {k: rounded(v, places) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(rounded(v, places) for v in value)
    return value


def comparable(row: dict, out) -> dict:
    """A row without its timing, with its output relative to the run's output folder."""
    output = row["output"] and str(Path(row["output"]).relative_to(out))
    return rounded({**row, "seconds": None, "output": output})


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def assert_same_pixels(out, local_out, names) -> None:
    for name in names:
        assert np.array_equal(pixels(out / name), pixels(local_out / name)), (
            f"{name} differs from the local run (batches of {BATCH} photos and 1 thread per actor on Ray, "
            "16 and 2 threads locally: a photo's pixels must depend only on the photo and the seed)")


def outputs(out) -> set:
    """The files a run left, by relative name (temp files, hidden, are not outputs)."""
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}


def test_ray_run_matches_the_local_run(cluster, photos, local_run, tmp_path, cpu_burner):
    local_out, local_rows = local_run
    with cpu_burner():
        rows = on_ray(photos, tmp_path)
    statuses = [r["status"] for r in rows]
    assert statuses.count("cloaked") >= FACE_PHOTOS - 2  # LFW photos have a face
    assert {r["status"] for r in rows if r["source"].endswith(("broken.jpg", "blank.png"))} == {"error", "no_face"}
    assert statuses == [r["status"] for r in local_rows]
    assert outputs(tmp_path) == outputs(local_out)
    assert_same_pixels(tmp_path, local_out, outputs(local_out))
    assert [comparable(r, tmp_path) for r in rows] == [comparable(r, local_out) for r in local_rows]


def test_workers_run_at_normal_priority(cluster):
    """Ray's default nice 15 starved the actors beside other busy processes (bench/RESULTS.md §15)."""
    import os as _os

    assert cluster.get(cluster.remote(lambda: _os.nice(0)).remote()) == 0


def test_one_person_shares_one_target_on_ray_as_locally(cluster, photos, tmp_path):
    """person=: the first batch (one actor) chooses the person's target, every later batch keeps it,
    and the files are the local run's with the same batch size."""
    from fawkes_fast import Cloaker

    local = cloak_jobs(Cloaker(**FAST), plan_jobs([photos], tmp_path / "local"), SaveOptions(), seed=SEED,
                       batch_size=BATCH, person="me")
    rows = on_ray(photos, tmp_path / "ray", person="me")
    cloaked = [r for r in rows if r["status"] == "cloaked"]
    assert len(cloaked) >= FACE_PHOTOS - 2
    assert len({r["faces"][0]["target"] for r in cloaked}) == 1
    assert [comparable(r, tmp_path / "ray") for r in rows] == [comparable(r, tmp_path / "local") for r in local]
    assert_same_pixels(tmp_path / "ray", tmp_path / "local", outputs(tmp_path / "local"))


def test_a_stopped_run_resumes_where_it_stopped(cluster, photos, local_run, tmp_path):
    from fawkes_fast.distributed import cloak_jobs_on_ray

    local_out, local_rows = local_run
    reported = []
    stopped = cloak_jobs_on_ray(plan_jobs([photos], tmp_path), SaveOptions(), cloaker_kwargs=FAST, seed=SEED,
                                batch_size=BATCH, actors=2, on_row=reported.append,
                                should_stop=lambda: any(r["status"] == "cloaked" for r in reported))
    assert len(stopped) == len(local_rows)
    skipped = [r for r in stopped if r["status"] == "skipped"]
    assert skipped and all(r["reason"] == INTERRUPTED for r in skipped)
    for r in stopped:  # a row never claims a file that is not there
        assert r["status"] not in ("cloaked", "exists") or Path(r["output"]).is_file()

    before = {name: (tmp_path / name).read_bytes() for name in outputs(tmp_path)}
    resumed = on_ray(photos, tmp_path)
    by_output = {str(Path(r["output"]).relative_to(tmp_path)): r["status"]
                 for r in resumed if r["output"]}
    assert by_output.keys() == outputs(local_out)
    assert all(by_output[name] == "exists" for name in before)
    assert "cloaked" in {by_output[name] for name in outputs(local_out) - before.keys()}
    assert all((tmp_path / name).read_bytes() == data for name, data in before.items())  # left alone
    assert [r["status"] for r in resumed if not r["output"]] == [r["status"] for r in local_rows if not r["output"]]
    assert_same_pixels(tmp_path, local_out, outputs(local_out))


def test_missing_ray_is_a_clear_error(monkeypatch, tmp_path):
    from fawkes_fast.distributed import RayUnavailable, cloak_paths

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(RayUnavailable, match=r"fawkes_fast\[ray\]"):
        cloak_paths([tmp_path], tmp_path / "out")


def test_the_package_and_the_cli_do_not_import_ray():
    code = ("import sys, fawkes_fast, fawkes_fast.distributed, fawkes_fast.jobs\n"
            "from fawkes_fast.cli.main import build_parser\n"
            "build_parser().parse_args(['cloak', 'x.jpg'])\n"
            "print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_bare_ray_leaves_the_address_to_ray(monkeypatch):
    """ray_session(None), what a bare `--ray` passes, lets Ray choose: RAY_ADDRESS's cluster, this
    machine's (`ray start`), or else a new local one. "auto" goes to Ray as is (a running cluster)."""
    import fawkes_fast.distributed as distributed

    calls = []

    class FakeRay:
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(address=None):
            calls.append(address)
            if address == "auto":
                raise ConnectionError("no running cluster found")

        @staticmethod
        def shutdown():
            calls.append("shutdown")

    monkeypatch.setattr(distributed, "import_ray", lambda: FakeRay)
    with distributed.ray_session(None):
        pass
    assert calls == [None, "shutdown"]
    with pytest.raises(distributed.RayUnavailable, match="'auto'"):
        with distributed.ray_session("auto"):
            pass
