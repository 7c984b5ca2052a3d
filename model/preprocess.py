"""Photo bytes or path -> RGB uint8 array at the model's input size.

Training, evaluation, the CLIs and the app all call `load_image` (or `decode` and
`letterbox`), so the network always sees photos prepared the same way:
1. open the file as one of FORMATS only (no other Pillow plugin ever sees it:
   EPS, for one, would run Ghostscript), refusing images over MAX_PIXELS; take the
   first frame (animated GIF/WebP);
2. a large JPEG (longer side at least 8x the input size) is decoded at 1/4 or 1/8
   scale in the DCT (Pillow's `draft`), keeping at least twice the input size on
   its longer side, so a 12-megapixel phone photo never exists at full size in
   memory (11 ms instead of 93 ms to decode here); smaller photos (every MIML
   photo) decode exactly as before;
3. apply the EXIF orientation, so a rotated phone photo is seen upright;
4. convert any Pillow mode to RGB: 16-bit greyscale is shifted to 8 bits, transparent
   pixels become neutral grey, CMYK/palette/1-bit/greyscale go through Pillow;
5. letterbox: shrink (or enlarge) so the longer side is `size`, keeping the aspect
   ratio, and centre on a `size` x `size` canvas of neutral grey (127, which the
   model's normalisation maps to 0). Nothing is cropped, and an odd aspect ratio
   is never stretched.
"""

import io
import os
import warnings

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

pillow_heif.register_heif_opener()  # HEIC/HEIF from phones; Pillow reads AVIF itself

MAX_PIXELS = 40_000_000  # about 7000 x 5700; larger files are refused as possible decompression bombs
# A file larger than MAX_PIXELS stored uncompressed at 8 bytes a pixel (16-bit RGBA) holds more than pixels:
# a PNG chunk that declares gigabytes would be read whole by Pillow before any pixel count is seen.
MAX_FILE_BYTES = 8 * MAX_PIXELS + (1 << 20)
GREY = (127, 127, 127)
# The only formats a photo is opened as (a multi-picture MPO from a phone opens through JPEG).
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "HEIF")
FORMAT_NAMES = "JPEG, PNG, GIF, WebP, BMP, TIFF, AVIF, HEIC"
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own bomb check, for code paths that open images directly


class ImageError(ValueError):
    """The file is not a photo we can read; the message says why, for a person."""


class ImageTooLargeError(ImageError):
    pass


class UnsupportedImageError(ImageError):
    pass


def _file_size(fp):
    """Bytes in a path or an open file on disk, else 0 (bytes in memory, a stream: nothing sparse to fear)."""
    try:
        return os.stat(fp).st_size if isinstance(fp, (str, os.PathLike)) else os.fstat(fp.fileno()).st_size
    except (OSError, AttributeError, ValueError):
        return 0  # an unreadable path is reported when it is opened


def open_image(source):
    """Open bytes, a path or a file object lazily (header only): checks the file size, the format and the
    pixel count."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    size = _file_size(fp)
    if size > MAX_FILE_BYTES:
        raise ImageTooLargeError(
            f"the file is {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit for a photo of at most "
            f"{MAX_PIXELS:,} pixels"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedImageError(f"not an image format we can read ({FORMAT_NAMES} work)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"image has too many pixels (limit {MAX_PIXELS:,})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"the image is damaged or truncated ({e})") from None
    if im.width * im.height > MAX_PIXELS:
        raise ImageTooLargeError(f"image is {im.width}x{im.height}, over the {MAX_PIXELS:,}-pixel limit")
    return im


def _to_rgb(im):
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit onto 0..255 by keeping the high byte: never a float copy of a possibly huge image
        wide = np.asarray(im)
        if im.mode == "I":
            wide = np.clip(wide, 0, 65535)
        return Image.fromarray((wide >> 8).astype(np.uint8)).convert("RGB")
    if im.mode == "F":
        return Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, GREY)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return im.convert("RGB")


def _open_scaled(source, size):
    """open_image, and for a JPEG at least 8 * `size` on its longer side, ask the decoder for a
    1/4 or 1/8 scale that keeps at least 2 * `size` (DCT scaling: the header's size changes at once)."""
    im = open_image(source)
    im.seek(0)  # the first frame of an animation (before draft: seeking an MPO resets its decoder)
    if im.format in ("JPEG", "MPO") and max(im.size) >= 8 * size:
        scale = 2 * size / max(im.size)  # draft keeps the decoded size at or above the requested one
        im.draft("RGB", (max(1, round(im.width * scale)), max(1, round(im.height * scale))))
    return im


def decoded_pixels(source, size):
    """Pixels `decode(source, size)` will hold, from the header alone (nothing is decoded)."""
    try:
        im = _open_scaled(source, size)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"the image is damaged or truncated ({e})") from None
    return im.width * im.height


def decode(source, size):
    """Decode to an upright RGB PIL image; a large JPEG comes out smaller, never under 2 * `size`."""
    try:
        im = _open_scaled(source, size)
        im = ImageOps.exif_transpose(im)
        return _to_rgb(im)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise ImageError(f"the image is damaged or truncated ({e})") from None


def fitted_size(width, height, size):
    """(w, h) of a width x height photo shrunk or enlarged so that its longer side is `size`."""
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def content_box(source, size):
    """Where the photo lies on its letterboxed canvas, as (top, left, bottom, right) in 0..1, from the header
    alone (the EXIF orientation included): training crops inside it, never into the grey bands."""
    im = open_image(source)
    width, height = im.size
    if im.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):  # rotated a quarter turn
        width, height = height, width
    w, h = fitted_size(width, height, size)
    top, left = (size - h) // 2, (size - w) // 2
    return top / size, left / size, (top + h) / size, (left + w) / size


def letterbox(im, size):
    """Fit an RGB PIL image into size x size without cropping or stretching."""
    w, h = fitted_size(im.width, im.height, size)
    resized = im.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), GREY)
    canvas.paste(resized, ((size - w) // 2, (size - h) // 2))
    return canvas


def load_image(source, size):
    """Bytes, path or file object -> uint8 array (size, size, 3) ready for the model."""
    return np.asarray(letterbox(decode(source, size), size), dtype=np.uint8)
