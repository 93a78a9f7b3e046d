"""Fuzz: 200 corrupted variants of real JPEG/PNG/WebP/HEIC photos and good photos in ONE batch.

Every file must come back with a status, the good photos must still be cloaked, and memory must
stay bounded (the decompression-bomb guard in io.images refuses absurd dimensions up front).
"""
from __future__ import annotations

import io
import re
import resource
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import lfw_image

fawkes_fast = pytest.importorskip("fawkes_fast")

VARIANTS = 200
STATUSES = {"cloaked", "no_face", "over_budget", "error"}


def _encodings(photo: Image.Image) -> dict[str, bytes]:
    out = {}
    for fmt, kw in (("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {"quality": 90})):
        buf = io.BytesIO()
        photo.save(buf, fmt, **kw)
        out[fmt] = buf.getvalue()
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        buf = io.BytesIO()
        photo.save(buf, "HEIF", quality=90)
        out["HEIF"] = buf.getvalue()
    except Exception:  # noqa: BLE001 - HEIC encoding is optional
        pass
    return out


def _bogus_dimensions(data: bytes, fmt: str, rng) -> bytes:
    """Rewrite the stored width/height with random (zero, small or huge) values."""
    w, h = (int(rng.choice([0, 1, 7, 65535, 30000, 2**31 - 1, int(rng.integers(1, 20000))])) for _ in range(2))
    b = bytearray(data)
    if fmt == "PNG":  # IHDR at byte 16; keep its CRC valid half the time so the header is believed
        b[16:24] = struct.pack(">II", w, h)
        if rng.random() < 0.5:
            b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    elif fmt == "JPEG":  # the SOF marker: FFC0/FFC2, length(2), precision(1), height(2), width(2)
        m = re.search(rb"\xff[\xc0\xc2]", bytes(b))
        if m:
            b[m.start() + 5:m.start() + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)
    elif fmt == "WEBP":  # VP8 key frame: 14-bit width and height after the start code
        m = re.search(rb"\x9d\x01\x2a", bytes(b))
        if m:
            b[m.end():m.end() + 4] = struct.pack("<HH", w & 0x3FFF, h & 0x3FFF)
    else:  # HEIF: the 'ispe' property holds version/flags, then width and height
        i = bytes(b).find(b"ispe")
        if i >= 0:
            b[i + 8:i + 16] = struct.pack(">II", w, h)
    return bytes(b)


def _corrupt(data: bytes, fmt: str, rng) -> bytes:
    kind = rng.integers(5)
    if kind == 0:  # truncated anywhere
        return data[:int(rng.integers(0, len(data)))]
    if kind == 1:  # flipped bytes, anywhere
        b = bytearray(data)
        for i in rng.integers(0, len(b), int(rng.integers(1, 40))):
            b[i] ^= int(rng.integers(1, 256))
        return bytes(b)
    if kind == 2:  # a bogus header: random bytes, or another format's magic
        magic = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"RIFF\x00\x00\x00\x00WEBP", b"GIF89a",
                 bytes(rng.integers(0, 256, 16, dtype=np.uint8))][int(rng.integers(5))]
        return magic + data[len(magic):]
    if kind == 3:
        return _bogus_dimensions(data, fmt, rng)
    head = _bogus_dimensions(data, fmt, rng)  # both: absurd dimensions and a cut
    return head[:int(rng.integers(len(head) // 4, len(head)))]


@pytest.mark.slow
def test_two_hundred_corrupted_files_in_one_batch(tmp_path, lfw_dir):
    rng = np.random.default_rng(11)
    sources = [Image.open(lfw_image(n, 1)).convert("RGB") for n in ("Aaron_Sorkin", "Abdullah_Gul", "Adam_Sandler")]
    originals = [(fmt, data) for photo in sources for fmt, data in _encodings(photo).items()]
    paths = []
    for i in range(VARIANTS):
        fmt, data = originals[int(rng.integers(len(originals)))]
        p = tmp_path / f"v{i:03d}.{fmt.lower()}"
        p.write_bytes(_corrupt(data, fmt, rng))
        paths.append(p)
    good = [lfw_image("Aaron_Sorkin", 1), lfw_image("Abdullah_Gul", 2), lfw_image("Adam_Sandler", 1)]
    batch = [good[0]] + paths[:100] + [good[1]] + paths[100:] + [good[2]]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = fawkes_fast.cloak(batch, mode="paper", steps=2, seed=0, device="cpu")  # 2 steps change pixels
    growth_gb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
    assert len(results) == len(batch)
    for src, r in zip(batch, results):
        assert r.status in STATUSES, (src, r.status)
        if r.status == "cloaked":
            assert r.image is not None and r.image.dtype == np.uint8 and r.image.ndim == 3
        else:
            assert r.image is None and r.error, (src, r.status)
    assert [results[i].status for i in (0, 101, len(batch) - 1)] == ["cloaked"] * 3
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    print(f"{VARIANTS} variants + 3 good photos: {counts}; peak RSS growth {growth_gb:.2f} GB")
    assert counts["error"] >= VARIANTS // 4  # the corruption did bite
    assert growth_gb < 8, growth_gb
