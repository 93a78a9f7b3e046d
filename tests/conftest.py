"""Shared fixtures. Tests that need ../shared skip cleanly where it is absent.

The tests keep their converted models in their own cache, never the user's: build/test-cache in
the repository (ignored by git; kept between runs because building the TorchScript models is
slow), or $FAWKES_FAST_TEST_CACHE. It is set here, before any test imports fawkes_fast, and is
inherited by the subprocesses tests start.
"""
from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_CACHE = Path(os.environ.get("FAWKES_FAST_TEST_CACHE", REPO / "build" / "test-cache"))
os.environ["FAWKES_FAST_CACHE"] = str(TEST_CACHE)

SHARED = Path(os.environ.get("FAWKES_FAST_SHARED", Path(__file__).resolve().parents[2] / "shared"))
LFW = SHARED / "data" / "lfw"
GAN = SHARED / "data" / "gan-faces"


def lfw_people(min_images: int = 1) -> list[tuple[str, int]]:
    """(name, image count) for LFW identities with at least `min_images` photos, sorted by name."""
    rows = []
    for line in (LFW / "people.tsv").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) >= min_images:
            rows.append((parts[0], int(parts[1])))
    return sorted(rows)


def lfw_image(name: str, i: int) -> Path:
    return LFW / name / f"{name}_{i:04d}.jpg"


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    if not LFW.is_dir():
        pytest.skip("../shared/data/lfw is not present")
    return LFW


@pytest.fixture(scope="session")
def gan_dir() -> Path:
    if not GAN.is_dir():
        pytest.skip("../shared/data/gan-faces is not present")
    return GAN


@pytest.fixture
def cpu_burner():
    """`with cpu_burner(): ...` runs the block while two other processes keep both cores busy (the busy
    machine of issue #23; bench/determinism.py's burner, niced so the test still gets the cores it
    waits for). Each burner stops by itself after 15 minutes, and any left is killed at teardown."""
    spec = importlib.util.spec_from_file_location("bench_determinism", REPO / "bench" / "determinism.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    started = []

    @contextmanager
    def burning(processes: int = 2, nice: int = 10):
        with bench.burning_cpus(processes, seconds=900, nice=nice) as procs:
            started.extend(procs)
            yield procs

    yield burning
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: long-running; still part of the default run")
