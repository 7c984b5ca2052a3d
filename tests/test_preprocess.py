import io

import numpy as np
import pytest
from PIL import Image

from model.preprocess import ImageError, ImageTooLargeError, UnsupportedImageError, load_image

SIZE = 64


def encode(im, fmt="PNG", **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def half_red_half_blue(w=80, h=60):
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(a)


RED, BLUE = (255, 0, 0), (0, 0, 255)
GREY_RED, GREY_BLUE = (76,) * 3, (29,) * 3  # ITU-R 601 luma of pure red and pure blue


@pytest.mark.parametrize(
    "mode, left, right, tolerance",
    [
        ("RGB", RED, BLUE, 2),
        ("RGBA", RED, BLUE, 2),
        ("P", RED, BLUE, 2),
        ("CMYK", RED, BLUE, 40),
        ("L", GREY_RED, GREY_BLUE, 2),
        ("LA", GREY_RED, GREY_BLUE, 2),
        ("I;16", GREY_RED, GREY_BLUE, 2),
        ("I", GREY_RED, GREY_BLUE, 2),
        ("F", GREY_RED, GREY_BLUE, 2),
        ("1", GREY_RED, GREY_BLUE, 30),  # dithered black and white: right on average
    ],
)
def test_every_mode_becomes_rgb_uint8_letterboxed(mode, left, right, tolerance):
    """80x60, red left and blue right, becomes 64x48 centred on 64x64 grey: bars of 8 rows above and below."""
    im = half_red_half_blue().convert("RGB")
    if mode in ("I;16", "I"):  # 16-bit data, as 16-bit PNGs and TIFFs hold it
        im = Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257)
        im = im if mode == "I;16" else im.convert("I")
    else:
        im = im.convert(mode)
    assert im.mode == mode
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode in ("I", "F") else "PNG"
    out = load_image(encode(im, fmt), SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert (out[:8] == 127).all() and (out[56:] == 127).all()  # the letterbox bars
    assert (np.abs(out[8:56].mean(axis=(1, 2)) - 127) > 30).all()  # every row between is photo, not grey
    for block, colour in ((out[12:52, 2:28], left), (out[12:52, 36:62], right)):
        assert np.abs(block.reshape(-1, 3).mean(axis=0) - colour).max() <= tolerance, (block.mean(axis=(0, 1)), colour)


def test_16bit_grey_is_scaled_not_clipped():
    im = Image.fromarray(np.full((20, 20), 32768, np.uint16))
    out = load_image(encode(im), 20)
    assert abs(int(out[10, 10, 0]) - 128) <= 1


def test_cmyk_colours_convert():
    im = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(encode(im, "JPEG", quality=95), 20)
    assert out[10, 10, 0] > 200 and out[10, 10, 1] < 60 and out[10, 10, 2] < 60


def test_transparency_becomes_neutral_grey():
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    assert tuple(load_image(encode(rgba), 20)[10, 10]) == (127, 127, 127)
    p = Image.new("P", (20, 20), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.info["transparency"] = 0
    assert tuple(load_image(encode(p, transparency=0), 20)[10, 10]) == (127, 127, 127)


def test_animated_image_uses_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    for fmt in ("GIF", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        pixel = load_image(data, 20)[10, 10]
        assert pixel[0] > 200 and pixel[2] < 60, fmt


def test_exif_orientation_is_applied():
    im = half_red_half_blue(80, 40)  # red left, blue right, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    out = load_image(encode(im, "JPEG", exif=exif, quality=95), 80)
    # upright it is portrait: red on top, blue at the bottom, grey bars left and right
    assert out[10, 40, 0] > 200 and out[70, 40, 2] > 200
    assert tuple(out[40, 5]) == (127, 127, 127)


def test_letterbox_keeps_aspect_ratio_without_stretching():
    strip = Image.new("RGB", (4000, 10), (255, 0, 0))
    out = load_image(encode(strip), SIZE)
    red_rows = np.flatnonzero((out[:, :, 0] > 200).all(axis=1))
    assert len(red_rows) == 1 and red_rows[0] == (SIZE - 1) // 2  # one row tall, centred: not stretched
    assert (out[0] == 127).all()


def test_tiny_image_fills_canvas():
    out = load_image(encode(Image.new("RGB", (1, 1), (0, 255, 0))), SIZE)
    assert (out[:, :, 1] > 200).all()


def test_path_and_bytes_give_the_same_array(tmp_path):
    data = encode(half_red_half_blue(), "JPEG")
    (tmp_path / "a.jpg").write_bytes(data)
    assert np.array_equal(load_image(data, SIZE), load_image(tmp_path / "a.jpg", SIZE))


def test_bad_inputs_raise_image_errors():
    with pytest.raises(UnsupportedImageError):
        load_image(b"hello, this is text", SIZE)
    with pytest.raises(UnsupportedImageError):
        load_image(b"", SIZE)
    jpeg = encode(half_red_half_blue(400, 300), "JPEG")
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(jpeg[: len(jpeg) // 2], SIZE)


def test_decompression_bomb_is_refused():
    png = encode(Image.new("1", (100, 100)))
    # rewrite the IHDR size to 50000 x 50000 (with a fixed CRC) without allocating it
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 50000, 50000, 1, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    bomb = png[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]
    with pytest.raises(ImageTooLargeError):
        load_image(bomb, SIZE)
