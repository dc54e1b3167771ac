"""tresnet.data.images: real files of several formats and modes, and broken ones."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tresnet.data.images import IMAGE_EXTENSIONS, is_image_file, load_image, to_rgb
from tresnet.errors import DataError

RNG = np.random.default_rng(0)


def _rgb(height=24, width=32) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("BMP", ".bmp"),
                                         ("WEBP", ".webp"), ("GIF", ".gif"), ("TIFF", ".tif")])
def test_formats_load_as_rgb(tmp_path, fmt, suffix):
    path = tmp_path / f"img{suffix}"
    _rgb().save(path, fmt)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (32, 24)


def test_lossless_rgb_round_trip(tmp_path):
    source = _rgb()
    source.save(tmp_path / "a.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "a.png")), np.asarray(source))


def test_greyscale_jpeg(tmp_path):
    Image.new("L", (16, 16), 77).save(tmp_path / "g.jpg")
    pixels = np.asarray(load_image(tmp_path / "g.jpg"))
    assert pixels.shape == (16, 16, 3) and np.all(np.abs(pixels.astype(int) - 77) <= 1)


def test_cmyk_jpeg_is_converted(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    red, green, blue = np.asarray(load_image(tmp_path / "c.jpg"))[8, 8].astype(int)
    assert red > 240 and green < 15 and blue < 15


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 32 * 8).reshape(8, 32).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    pixels = np.asarray(load_image(tmp_path / "deep.png"))[..., 0]
    assert np.array_equal(pixels, np.rint(values / 257.0).astype(np.uint8))
    dark = np.full((4, 4), 4096, np.uint16)  # 1/16 of full scale: dark grey, not white
    Image.fromarray(dark).save(tmp_path / "dark.png")
    assert np.all(np.asarray(load_image(tmp_path / "dark.png")) == 16)


def test_thirty_two_bit_integer_mode_is_read_as_sixteen_bit():
    img = Image.fromarray(np.full((4, 4), 257 * 100, np.int32))
    assert img.mode == "I"
    assert np.all(np.asarray(to_rgb(img)) == 100)


@pytest.mark.parametrize("value, expected", [(0.5, 128), (1.0, 255), (128.0, 128), (300.0, 255)])
def test_float_mode(value, expected):
    img = Image.fromarray(np.full((4, 4), value, np.float32))
    assert img.mode == "F"
    assert np.all(np.asarray(to_rgb(img)) == expected)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 3, 4), np.uint8)
    rgba[0] = (255, 0, 0, 255)  # opaque red
    rgba[1] = (255, 0, 0, 0)  # transparent red: the background shows
    rgba[2] = (0, 0, 0, 128)  # half-transparent black over white: mid grey
    rgba[3] = (0, 0, 0, 0)  # transparent black (a common hidden colour): white, not black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    pixels = np.asarray(load_image(tmp_path / "t.png")).astype(int)
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[1, 0].tolist() == [255, 255, 255]
    assert np.all(np.abs(pixels[2, 0] - 127) <= 1)
    assert pixels[3, 0].tolist() == [255, 255, 255]


def test_la_and_palette_with_transparency(tmp_path):
    la = Image.merge("LA", (Image.new("L", (4, 4), 0), Image.new("L", (4, 4), 0)))
    la.save(tmp_path / "la.png")
    assert np.all(np.asarray(load_image(tmp_path / "la.png")) == 255)
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "p.png", transparency=0)
    pixels = np.asarray(load_image(tmp_path / "p.png"))
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[1, 1].tolist() == [0, 255, 0]


def test_palette_and_bilevel(tmp_path):
    _rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.gif")
    assert load_image(tmp_path / "p.gif").mode == "RGB"
    bits = Image.new("1", (8, 8), 0)
    bits.putpixel((1, 1), 1)
    bits.save(tmp_path / "b.png")
    pixels = np.asarray(load_image(tmp_path / "b.png"))
    assert pixels[1, 1].tolist() == [255, 255, 255] and pixels[0, 0].tolist() == [0, 0, 0]


def test_rgb_is_returned_as_is():
    img = _rgb()
    assert to_rgb(img) is img


def test_exif_orientation_only_when_asked(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    _rgb(height=10, width=30).save(tmp_path / "o.jpg", exif=exif)
    assert load_image(tmp_path / "o.jpg").size == (30, 10)
    assert load_image(tmp_path / "o.jpg", exif_transpose=True).size == (10, 30)


def _corrupt_png(path):
    _rgb(64, 64).save(path, "PNG")
    data = bytearray(path.read_bytes())
    start = data.find(b"IDAT") + 100
    data[start:start + 40] = bytes(40)  # zeroed compressed pixels
    path.write_bytes(bytes(data))


def _truncated_jpeg(path):
    _rgb(64, 64).save(path, "JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_text("this is not an image"), "not an image"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (_truncated_jpeg, "truncated"),
    (_corrupt_png, "corrupt"),
])
def test_broken_files_raise_one_line_data_error(tmp_path, make, reason):
    path = tmp_path / ("broken.png" if make is _corrupt_png else "broken.jpg")
    make(path)
    with pytest.raises(DataError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and reason in message and "\n" not in message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(DataError, match="is a folder"):
        load_image(tmp_path)


def test_extensions():
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"} <= set(IMAGE_EXTENSIONS)
    assert is_image_file("n01440764/ILSVRC2012_val_00000293.JPEG")
    assert not is_image_file("notes.txt")


def test_find_images_expands_folders_and_reports_what_names_nothing(tmp_path):
    from tresnet.data import find_images

    (tmp_path / "pics" / "sub").mkdir(parents=True)
    (tmp_path / "pics" / ".hidden").mkdir()
    for name in ("pics/b.jpg", "pics/sub/a.PNG", "pics/.hidden/c.jpg", "pics/notes.txt", "odd.name"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    files, errors = find_images([tmp_path / "pics", tmp_path / "odd.name", tmp_path / "empty", tmp_path / "nope"])
    assert files == [tmp_path / "pics" / "b.jpg", tmp_path / "pics" / "sub" / "a.PNG", tmp_path / "odd.name"]
    assert [message.split(":")[0] for _, message in errors] == [
        f"no image files in folder {tmp_path / 'empty'}", f"cannot read image {tmp_path / 'nope'}"]
