"""Image loading (modes, orientation, bad files) and atomic, metadata-safe saving."""
from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import lfw_image, lfw_people
import fawkes_fast.io.images as images_mod
from fawkes_fast.io.images import (IMAGE_SUFFIXES, MAX_PIXELS, ImageError, decode_image, encode_image,
                                   load_image, load_image_with_meta)
from fawkes_fast.io.save import save_image_atomic


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb_ok(a: np.ndarray, h: int, w: int):
    assert a.dtype == np.uint8 and a.shape == (h, w, 3) and a.flags["C_CONTIGUOUS"]


# ----------------------------------------------------------------------------- orientation

def test_exif_orientation_applied():
    a = np.zeros((20, 40, 3), np.uint8)        # H=20, W=40: left half red, right half blue
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6                             # rotate 90° clockwise to display
    exif[0x010F] = "TestCam"
    data = _bytes(im, "JPEG", exif=exif.tobytes(), quality=95)
    rgb, info = load_image_with_meta(data)
    _rgb_ok(rgb, 40, 20)                         # displayed upright: 40 tall, 20 wide
    assert rgb[5, 10, 0] > 200 and rgb[5, 10, 2] < 60     # top = former left (red)
    assert rgb[35, 10, 2] > 200 and rgb[35, 10, 0] < 60   # bottom = former right (blue)
    assert info.original_size == (40, 20) and info.size == (20, 40)
    assert info.format == "JPEG"
    ex = Image.Exif()
    ex.load(info.exif)
    assert ex[0x0112] == 1 and ex[0x010F] == "TestCam"


# ----------------------------------------------------------------------------- modes

def test_modes():
    base = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    rgb_im = Image.fromarray(base)
    # RGB PNG / JPEG
    np.testing.assert_array_equal(load_image(_bytes(rgb_im, "PNG")), base)
    _rgb_ok(load_image(_bytes(rgb_im, "JPEG")), 12, 16)
    # L
    g = rgb_im.convert("L")
    out = load_image(_bytes(g, "PNG"))
    _rgb_ok(out, 12, 16)
    np.testing.assert_array_equal(out[..., 0], np.asarray(g))
    assert (out[..., 0] == out[..., 2]).all()
    # 1-bit
    out = load_image(_bytes(g.convert("1"), "PNG"))
    assert set(np.unique(out)) <= {0, 255}
    # P (palette) and P with a transparent index -> white
    p = rgb_im.convert("P", palette=Image.ADAPTIVE, colors=8)
    np.testing.assert_array_equal(load_image(_bytes(p, "PNG")), np.asarray(p.convert("RGB")))
    idx = np.asarray(p)[0, 0]
    out = load_image(_bytes(p, "PNG", transparency=int(idx)))
    assert (out[0, 0] == 255).all()
    # RGBA: transparent -> white, opaque -> colour, half -> blend over white
    a = np.dstack([base, np.full((12, 16), 255, np.uint8)])
    a[0, 0, 3] = 0
    a[0, 1, 3] = 128
    out = load_image(_bytes(Image.fromarray(a, "RGBA"), "PNG"))
    assert (out[0, 0] == 255).all()
    np.testing.assert_array_equal(out[5:, 5:], base[5:, 5:])
    exp = np.rint(base[0, 1].astype(float) * 128 / 255 + 255 * (1 - 128 / 255))
    assert np.abs(out[0, 1].astype(int) - exp).max() <= 1
    # LA
    la = Image.merge("LA", [g, Image.fromarray(a[..., 3])])
    out = load_image(_bytes(la, "PNG"))
    assert (out[0, 0] == 255).all()
    np.testing.assert_array_equal(out[5:, 5:, 0], np.asarray(g)[5:, 5:])
    # CMYK JPEG
    cmyk = rgb_im.convert("CMYK")
    out = load_image(_bytes(cmyk, "JPEG", quality=100))
    _rgb_ok(out, 12, 16)
    assert np.abs(out.astype(int) - np.asarray(cmyk.convert("RGB")).astype(int)).mean() < 8


def test_16bit_scaled_not_clipped():
    v = np.array([[0, 257, 32768, 65535]], np.uint16)
    exp = np.array([0, 1, 128, 255], np.uint8)
    im16 = Image.fromarray(v)
    assert im16.mode.startswith("I;16")
    out = load_image(_bytes(im16, "PNG"))
    np.testing.assert_array_equal(out[0, :, 0], exp)
    # big-endian 16-bit raw
    imb = Image.frombytes("I;16B", (4, 1), v.astype(">u2").tobytes())
    np.testing.assert_array_equal(load_image(imb)[0, :, 0], exp)
    # mode I holding 16-bit data, and mode I holding 8-bit data
    np.testing.assert_array_equal(load_image(Image.fromarray(v.astype(np.int32)))[0, :, 0], exp)
    i8 = Image.fromarray(np.array([[0, 10, 200]], np.int32))
    assert i8.mode == "I"
    np.testing.assert_array_equal(load_image(i8)[0, :, 0], [0, 10, 200])
    # F: [0,1] floats scaled, larger values clipped to 255
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    np.testing.assert_array_equal(load_image(f)[0, :, 0], [0, 128, 255])
    f2 = Image.fromarray(np.array([[0.0, 100.0, 300.0]], np.float32))
    np.testing.assert_array_equal(load_image(f2)[0, :, 0], [0, 100, 255])
    # numpy uint16 RGB
    rgb16 = np.dstack([v, v, v])
    np.testing.assert_array_equal(load_image(rgb16)[0, :, 1], exp)


def test_array_and_source_types(tmp_path):
    base = np.random.default_rng(1).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(base), base)
    assert not np.shares_memory(load_image(base), base)
    gray = base[..., 0]
    out = load_image(gray)
    _rgb_ok(out, 10, 14)
    rgba = np.dstack([base, np.full((10, 14), 255, np.uint8)])
    np.testing.assert_array_equal(load_image(rgba), base)
    np.testing.assert_array_equal(load_image(base.astype(np.float32) / 255.0), base)
    np.testing.assert_array_equal(load_image(np.asfortranarray(base)), base)
    with pytest.raises(ImageError):
        load_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ImageError):
        load_image(np.zeros((0, 4, 3), np.uint8))
    p = tmp_path / "x.png"
    Image.fromarray(base).save(p)
    np.testing.assert_array_equal(load_image(p), base)
    np.testing.assert_array_equal(load_image(str(p)), base)
    np.testing.assert_array_equal(load_image(p.read_bytes()), base)
    with open(p, "rb") as fh:
        np.testing.assert_array_equal(load_image(fh), base)
    np.testing.assert_array_equal(load_image(Image.open(p)), base)


def test_animated_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = _bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    rgb, info = load_image_with_meta(gif)
    assert info.n_frames == 3
    assert rgb[4, 4, 0] > 200 and rgb[4, 4, 1] < 50
    webp = _bytes(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50,
                  lossless=True)
    rgb, info = load_image_with_meta(webp)
    assert info.n_frames == 3
    assert rgb[4, 4, 0] > 200 and rgb[4, 4, 1] < 50


def test_heic_if_available():
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    im = Image.new("RGB", (64, 48), (200, 30, 40))
    try:
        data = _bytes(im, "HEIF", quality=90)
    except Exception as e:  # encoder not built into this libheif
        pytest.skip(f"no HEIF encoder: {e}")
    rgb = load_image(data)
    _rgb_ok(rgb, 48, 64)
    assert abs(int(rgb[24, 32, 0]) - 200) < 20


def test_real_lfw_photo(lfw_dir):
    name, _ = lfw_people(1)[0]
    rgb, info = load_image_with_meta(lfw_image(name, 1))
    _rgb_ok(rgb, 250, 250)
    assert info.format == "JPEG"


# ----------------------------------------------------------------------------- bad files

def _png_header_claiming(w: int, h: int) -> bytes:
    png = bytearray(_bytes(Image.new("L", (8, 8)), "PNG"))
    # IHDR data starts at byte 16: width, height (big endian); fix its CRC
    png[16:24] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF
    png[29:33] = struct.pack(">I", crc)
    return bytes(png)


def test_bad_files(tmp_path):
    good = _bytes(Image.fromarray(
        np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    good_png = _bytes(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")
    cases = {
        "empty": b"",
        "truncated_jpeg": good[: len(good) // 2],
        "truncated_png": good_png[: len(good_png) - 30],
        "garbage": os.urandom(2000),
        "text": b"hello, I am not an image\n" * 20,
        "corrupt_jpeg": good[:200] + os.urandom(len(good) - 200),
        "bomb": _png_header_claiming(20000, 20000),
    }
    for what, data in cases.items():
        p = tmp_path / f"{what}.jpg"
        p.write_bytes(data)
        with pytest.raises(ImageError) as ei:
            load_image(p)
        assert str(p) in str(ei.value), what
        with pytest.raises(ImageError):
            load_image(data)
    assert "empty" in str(pytest.raises(ImageError, load_image, tmp_path / "empty.jpg").value)
    truncated = str(pytest.raises(ImageError, load_image, tmp_path / "truncated_jpeg.jpg").value)
    assert truncated.count("image file is truncated") == 1, truncated  # said once, not nested
    assert "MAX_PIXELS" in str(pytest.raises(ImageError, load_image,
                                             tmp_path / "bomb.jpg").value)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError):
        load_image(12345)


def _jpeg_header_claiming(w: int, h: int, **save) -> bytes:
    """A 16x16 JPEG whose frame header (SOF) was edited to say w x h."""
    jpeg = bytearray(_bytes(Image.new("RGB", (16, 16), (200, 100, 50)), "JPEG", **save))
    sof = max(jpeg.find(b"\xff\xc0"), jpeg.find(b"\xff\xc2"))
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(jpeg)


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_too_short_for_its_declared_size_is_corrupt(progressive):
    """libjpeg paints what a short scan lacks grey, without an error: the size check refuses it."""
    with pytest.raises(ImageError, match="too short for the 1999x2001 frame"):
        load_image(_jpeg_header_claiming(1999, 2001, progressive=progressive))
    rng = np.random.default_rng(3)
    for img in (Image.new("RGB", (2000, 2000), (200, 100, 50)), Image.new("L", (1200, 900), 128),
                Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))):
        for quality in (1, 95):  # honest files pass, however flat and however compressed
            data = _bytes(img, "JPEG", quality=quality, progressive=progressive)
            assert load_image(data).shape[:2] == img.size[::-1]


def test_max_pixels_allows_50mp(monkeypatch):
    assert MAX_PIXELS >= 60_000_000
    hdr = _png_header_claiming(8700, 5800)     # 50 MP header: passes the guard, then
    with pytest.raises(ImageError) as ei:      # fails as a broken file, not as a bomb
        load_image(hdr)
    assert "MAX_PIXELS" not in str(ei.value)
    big = _bytes(Image.new("RGB", (8700, 5800), (10, 20, 30)), "JPEG", quality=80)
    rgb = load_image(big)
    _rgb_ok(rgb, 5800, 8700)
    del rgb
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 1000)
    with pytest.raises(ImageError, match="MAX_PIXELS"):
        load_image(_bytes(Image.new("RGB", (40, 40)), "PNG"))


# ----------------------------------------------------------------------------- saving

def _exif_with_gps() -> bytes:
    ex = Image.Exif()
    ex[0x010F] = "TestCam"
    ex[0x0112] = 1
    gps = ex.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (52.0, 31.0, 12.0)
    return ex.tobytes()


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_metadata_stripped_by_default_kept_when_asked(tmp_path, fmt):
    src = tmp_path / "in.jpg"
    a = np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    icc = b"\x00" * 16 + b"fake-icc-profile"
    Image.fromarray(a).save(src, "JPEG", exif=_exif_with_gps(), icc_profile=icc)
    rgb, info = load_image_with_meta(src)
    assert info.exif and info.icc_profile == icc
    out = save_image_atomic(tmp_path / f"out.{fmt}", rgb, format=fmt, protect=[src])
    with Image.open(out) as im:
        assert len(im.getexif()) == 0
        assert "exif" not in im.info and not im.info.get("icc_profile")
    kept = save_image_atomic(tmp_path / f"kept.{fmt}", rgb, format=fmt, exif=info.exif,
                             icc_profile=info.icc_profile)
    with Image.open(kept) as im:
        ex = im.getexif()
        assert ex.get(0x010F) == "TestCam"
        assert ex.get_ifd(0x8825).get(1) == "N"
        assert im.info.get("icc_profile") == icc


def test_atomic_save_never_overwrites(tmp_path):
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 200, np.uint8)
    out = tmp_path / "out.png"
    assert save_image_atomic(out, a) == out
    before = out.read_bytes()
    with pytest.raises(FileExistsError):
        save_image_atomic(out, b)
    assert out.read_bytes() == before
    save_image_atomic(out, b, overwrite=True)
    np.testing.assert_array_equal(load_image(out), b)
    # inputs are protected even with overwrite=True, however the path is spelled
    inp = tmp_path / "photo.png"
    save_image_atomic(inp, a)
    orig = inp.read_bytes()
    for spelled in (inp, tmp_path / "sub" / ".." / "photo.png", str(inp)):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match="input"):
            save_image_atomic(spelled, b, overwrite=True, protect=[inp])
    link = tmp_path / "link.png"
    link.symlink_to(inp)
    with pytest.raises(ValueError):
        save_image_atomic(link, b, overwrite=True, protect=[inp])
    hard = tmp_path / "hard.png"
    os.link(inp, hard)
    with pytest.raises(ValueError):
        save_image_atomic(hard, b, overwrite=True, protect=[inp])
    assert inp.read_bytes() == orig
    assert not list(tmp_path.glob(".*.tmp"))


def test_temp_file_cleaned_on_failure(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "link", boom)
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_image_atomic(tmp_path / "o.png", np.zeros((4, 4, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_directory_clear_error(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OSError) as ei:
        save_image_atomic(afile / "out.png", np.zeros((4, 4, 3), np.uint8))
    msg = str(ei.value)
    assert "afile" in msg and "cannot write" in msg and "not a directory" in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_image_atomic(tmp_path / "nope" / "out.png", np.zeros((4, 4, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        save_image_atomic(tmp_path / "o.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        save_image_atomic(tmp_path / "o.bmp", np.zeros((4, 4, 3), np.uint8), format="bmp")
    assert not list(tmp_path.iterdir())


def test_encode_decode_roundtrip():
    a = np.random.default_rng(4).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode_image(a, "png")), a)
    np.testing.assert_array_equal(decode_image(encode_image(a, "webp", quality=100)), a)
    smooth = np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], 24, 0).repeat(3, 2)
    j = decode_image(encode_image(smooth, "jpeg", quality=95))
    assert np.abs(j.astype(int) - smooth).mean() < 2
    assert encode_image(a, "jpeg")[:2] == b"\xff\xd8"
    # the bytes that save_image_atomic writes are exactly encode_image's bytes
    assert encode_image(a, "png") == encode_image(a, "png")


# ----------------------------------------------------------------------------- process-wide state

def test_import_leaves_pillow_truncation_setting_alone():
    """Importing the loader must not flip Pillow's process-wide LOAD_TRUNCATED_IMAGES."""
    import subprocess
    import sys

    code = ("from PIL import ImageFile; ImageFile.LOAD_TRUNCATED_IMAGES = True; "
            "import fawkes_fast.io.images, fawkes_fast.jobs; print(ImageFile.LOAD_TRUNCATED_IMAGES)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_one_list_of_image_suffixes(tmp_path):
    """Folder listings of the CLI and of `evaluate` read the same suffixes (io.images.IMAGE_SUFFIXES)."""
    from fawkes_fast.evaluate.user_check import list_images
    from fawkes_fast.io.inputs import find_inputs

    for suffix in IMAGE_SUFFIXES | {".txt"}:
        (tmp_path / f"x{suffix}").write_bytes(b"")
    listed = {p.suffix for p in list_images(tmp_path)}
    found = {f.path.suffix for f in find_inputs([tmp_path]) if f.skip is None}
    assert listed == found == set(IMAGE_SUFFIXES)


def test_exif_kept_without_thumbnail_or_maker_note():
    ex = Image.Exif()
    ex[0x010F] = "Cam"
    ex[0x0112] = 6
    ex.get_ifd(0x8825)[1] = "N"  # GPS is kept: --keep-metadata means it
    ex.get_ifd(0x8769)[0x927C] = b"PREVIEW" * 20  # maker notes may hide a preview JPEG
    ex[0x02BC] = b"<x:xmpmeta/>"
    _, info = load_image_with_meta(_bytes(Image.new("RGB", (32, 16)), "JPEG", exif=ex.tobytes()))
    kept = Image.Exif()
    kept.load(info.exif)
    assert kept[0x010F] == "Cam" and kept[0x0112] == 1 and kept.get_ifd(0x8825) == {1: "N"}
    assert b"PREVIEW" not in info.exif and 0x02BC not in kept


def test_huge_file_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(images_mod, "MAX_FILE_BYTES", 1000)
    big = tmp_path / "video.jpg"
    big.write_bytes(b"\xff\xd8" + bytes(5000))
    with pytest.raises(ImageError, match="MAX_FILE_BYTES"):
        load_image(big)
