"""Robust extractor training (`models train-robust`, paper §5.3) and the shipped dlib-robust."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import lfw_image, lfw_people
from fawkes_fast.extractors import load
from fawkes_fast.extractors.registry import builtin
from fawkes_fast.training.chip_data import cut_chips, list_photos, load_chips, save_chips
from fawkes_fast.training.robust import feature_shift, pgd, trainable


@pytest.fixture(scope="module")
def chips(lfw_dir):
    names = [n for n, c in lfw_people(2)][:6]
    paths = [lfw_image(n, i) for n in names for i in (1, 2)]
    c, src = cut_chips(paths, load("dlib"))
    assert len(c) >= 10
    return c, src


def test_list_photos_keeps_big_identities_out(tmp_path):
    for person, n in (("big", 3), ("small", 2)):
        (tmp_path / person).mkdir()
        for i in range(n):
            (tmp_path / person / f"{i}.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a photo")
    assert len(list_photos([tmp_path])) == 5
    kept = list_photos([tmp_path], holdout_min=3)
    assert [p.parent.name for p in kept] == ["small", "small"]
    with pytest.raises(FileNotFoundError):
        list_photos([tmp_path / "missing"])


def test_chip_file_round_trip(chips, tmp_path):
    c, src = chips
    save_chips(tmp_path / "c.npz", c, src, "dlib")
    back, src2 = load_chips(tmp_path / "c.npz", "dlib", 150)
    assert back.shape == c.shape and back.dtype == torch.uint8 and src2 == src
    assert (back.float() - c.float()).abs().mean() < 2.0  # JPEG q95
    with pytest.raises(ValueError, match="arcface"):
        load_chips(tmp_path / "c.npz", "arcface", 112)


def test_pgd_stays_in_its_ball_and_beats_random_noise(chips):
    ext = load("dlib")
    x = chips[0][:4].float()
    xa = pgd(ext.module, x, eps=4.0, step=1.0, steps=5, gen=torch.Generator().manual_seed(0))
    assert (xa - x).abs().max() <= 4.0 + 1e-4
    noise = (x + (torch.randint(0, 2, x.shape).float() * 8 - 4)).clamp(0, 255)
    with torch.no_grad():
        f, fa, fn = (ext.features(v) for v in (x, xa, noise))
    assert (fa - f).norm(dim=1).mean() > 2 * (fn - f).norm(dim=1).mean()
    assert feature_shift(ext.module, x, 4.0, 1.0, 3, batch=2) > 0


def test_onnx_weights_become_trainable():
    ext = load("sface")
    loader = builtin("sface")
    m = trainable(loader.build(loader.source()))
    n = sum(p.numel() for p in m.parameters())
    assert n > 1_000_000  # the conv weights, not just a few scalars
    assert "mean" in dict(m.named_buffers()) or "mean" in str(list(m.named_buffers()))
    x = torch.rand(2, 3, 112, 112) * 255
    y = m(x).pow(2).sum()
    y.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    with torch.no_grad():  # unchanged weights give the built-in's features
        assert torch.allclose(torch.nn.functional.normalize(m(x), dim=1), ext.features(x), atol=1e-4)


def test_train_robust_cli_end_to_end(chips, tmp_path):
    from fawkes_fast.cli import main

    photos = tmp_path / "photos" / "someone"
    photos.mkdir(parents=True)
    for p in chips[1][:10]:
        shutil.copy(p, photos)
    out = tmp_path / "robust"
    rc = main(["models", "train-robust", "--data", str(tmp_path / "photos"), "--epochs", "1", "--pgd-steps", "1",
               "--batch", "4", "--holdout", "3", "--eval-steps", "2", "--lr", "1e-5", "--device", "cpu",
               "--save-chips", str(tmp_path / "c.npz"), "-o", str(out)])
    assert rc == 0
    record = json.loads(out.with_suffix(".record.json").read_text())
    assert record["base"] == "dlib" and record["data_photos"] == 10 and len(record["data_hash"]) == 64
    assert record["recipe"]["pgd_steps"] == 1 and record["recipe"]["eps"] == 8.0
    assert set(record["metrics"]) >= {"cosine_to_original", "pgd_feature_shift_original", "pgd_feature_shift_robust"}
    assert record["metrics"]["cosine_to_original"] > 0.95  # a small step stays the same recognizer
    assert all(v.dtype == torch.float16 for v in torch.load(out.with_suffix(".weights.pt")).values())
    robust = load(out.with_suffix(".pt"))  # the TorchScript + spec pair loads like any model file
    x = chips[0][:2].float()
    with torch.no_grad():
        cos = (robust.features(x) * load("dlib").features(x)).sum(1)
    assert cos.min() > 0.9 and cos.max() < 1.0 - 1e-7  # fine-tuned, not a copy
    assert (tmp_path / "c.npz").is_file()


def test_shipped_dlib_robust_is_still_dlib(chips):
    robust, dlib = load("dlib-robust"), load("dlib")
    x = chips[0].float()
    with torch.no_grad():
        fr, fd = robust.features(x), dlib.features(x)
    same = (fr * fd).sum(1)
    assert same.mean() > 0.9  # stays the same recognizer (teacher term)
    # and the same people stay close while different people stay apart in its own space
    d = torch.cdist(fr, fr).numpy()
    names = [p.split("/")[-2] for p in chips[1]]
    same_person = np.array([[a == b for b in names] for a in names])
    off = ~np.eye(len(names), dtype=bool)
    assert d[same_person & off].mean() < d[~same_person].mean()
