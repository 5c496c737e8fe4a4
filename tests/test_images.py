"""Tolerant image loading: conversions of odd modes and skips of unusable files."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from attnviz.data.images import list_images, load_image


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


@pytest.fixture()
def odd_files(tmp_path):
    d = tmp_path
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "ok.png")
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n")
    full = _png_bytes(Image.fromarray(rgb))
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG", quality=95)
    (d / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(d / "cmyk.jpg", quality=100)  # red
    sixteen = np.full((20, 20), 65535, dtype=np.uint16)
    sixteen[:10] = 257 * 100
    Image.fromarray(sixteen).save(d / "gray16.png")
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 255] + [0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, 20, 10))
    pal.save(d / "palette.png")
    pal_t = pal.copy()
    pal_t.info["transparency"] = 0
    pal_t.save(d / "palette_transparent.png", transparency=0)
    Image.new("L", (20, 20), 77).save(d / "gray.png")
    rgba = Image.new("RGBA", (20, 20), (10, 20, 30, 255))
    rgba.paste((200, 0, 0, 0), (0, 0, 20, 10))  # top half fully transparent
    rgba.save(d / "rgba.png")
    Image.new("RGB", (4, 4)).save(d / "tiny.png")
    Image.new("RGB", (200, 10)).save(d / "strip.png")
    (d / "folder.png").mkdir()  # a folder with an image extension
    return d


def test_convertible_modes_become_rgb(odd_files):
    d = odd_files
    img, reason = load_image(d / "ok.png")
    assert reason is None and img.mode == "RGB" and img.size == (32, 24)

    cmyk, reason = load_image(d / "cmyk.jpg")
    assert reason is None and cmyk.mode == "RGB"
    r, g, b = np.asarray(cmyk)[10, 10].astype(int)
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 1, 1, 0) is red

    g16, reason = load_image(d / "gray16.png")
    arr = np.asarray(g16)
    assert reason is None and g16.mode == "RGB"
    assert (arr[15] == 255).all() and (arr[5] == 100).all()  # 16-bit scaled to 8-bit, not clipped

    pal, reason = load_image(d / "palette.png")
    arr = np.asarray(pal)
    assert reason is None and tuple(arr[5, 5]) == (0, 255, 0) and tuple(arr[15, 5]) == (0, 0, 255)

    pal_t, reason = load_image(d / "palette_transparent.png")
    arr = np.asarray(pal_t)
    assert reason is None and tuple(arr[15, 5]) == (255, 255, 255)  # transparent -> white
    assert tuple(arr[5, 5]) == (0, 255, 0)

    gray, reason = load_image(d / "gray.png")
    assert reason is None and tuple(np.asarray(gray)[3, 3]) == (77, 77, 77)

    rgba, reason = load_image(d / "rgba.png")
    arr = np.asarray(rgba)
    assert reason is None and rgba.mode == "RGB"
    assert tuple(arr[2, 2]) == (255, 255, 255) and tuple(arr[15, 2]) == (10, 20, 30)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty.jpg", "empty file"),
        ("text.jpg", "not an image"),
        ("truncated.png", "truncated"),
        ("truncated.jpg", "truncated"),
        ("tiny.png", "too small"),
        ("strip.png", "extreme aspect ratio"),
        ("missing.png", "missing file"),
        ("folder.png", "a folder, not a file"),
    ],
)
def test_unusable_files_are_skipped_with_a_reason(odd_files, name, reason):
    img, why = load_image(odd_files / name)
    assert img is None
    assert why is not None and why.startswith(reason), why


def test_unreadable_file_says_permission_denied_not_corrupt(odd_files, monkeypatch):
    path = odd_files / "ok.png"
    if os.geteuid() == 0:  # root reads any file: make the open itself fail as it would
        import attnviz.data.images as images_module

        def denied(fp, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(fp))

        monkeypatch.setattr(images_module.Image, "open", denied)
    else:
        path.chmod(0)
    try:
        img, why = load_image(path)
    finally:
        path.chmod(0o644)
    assert img is None and why == "permission denied"


def test_list_images_class_subfolders_and_flat(tmp_path):
    for cls, n in (("cat", 2), ("ant", 3)):
        (tmp_path / "set" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (16, 16)).save(tmp_path / "set" / cls / f"{i}.png")
    (tmp_path / "set" / "cat" / "notes.txt").write_text("ignored")
    (tmp_path / "set" / "empty_class").mkdir()
    (tmp_path / "set" / "loose.png").write_bytes(b"")  # root files ignored in class mode
    paths, labels, classes = list_images(tmp_path / "set")
    assert classes == ["ant", "cat"]
    assert labels == [0, 0, 0, 1, 1]
    assert [p.parent.name for p in paths] == ["ant"] * 3 + ["cat"] * 2

    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("b.JPG", "a.png", ".hidden.png", "c.txt"):
        (flat / name).write_bytes(b"x")
    paths, labels, classes = list_images(flat)
    assert [p.name for p in paths] == ["a.png", "b.JPG"] and labels is None and classes == []

    with pytest.raises(NotADirectoryError, match="does not exist"):
        list_images(tmp_path / "nope")

    # excluded folders (a run's own output inside the image folder) are never listed
    (tmp_path / "set" / "cat" / "out").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "set" / "cat" / "out" / "figure.png")
    (tmp_path / "set" / "out2").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "set" / "out2" / "figure.png")
    paths, labels, classes = list_images(tmp_path / "set")
    assert classes == ["ant", "cat", "out2"] and len(paths) == 7
    excluded = [tmp_path / "set" / "cat" / "out", tmp_path / "set" / "out2"]
    paths, labels, classes = list_images(tmp_path / "set", exclude=excluded)
    assert classes == ["ant", "cat"] and labels == [0, 0, 0, 1, 1]
    assert all("out" not in p.parent.name for p in paths)
