"""Photo bytes or path -> RGB uint8 array at the model's input size.

Training, evaluation, the CLIs and the app all call `load_image`, so the network
always sees photos prepared the same way:
1. decode the first frame (animated GIF/WebP), refusing images over MAX_PIXELS;
2. apply the EXIF orientation, so a rotated phone photo is seen upright;
3. convert any Pillow mode to RGB: 16-bit greyscale is scaled to 8 bits, transparent
   pixels become neutral grey, CMYK/palette/1-bit/greyscale go through Pillow;
4. letterbox: shrink (or enlarge) so the longer side is `size`, keeping the aspect
   ratio, and centre on a `size` x `size` canvas of neutral grey (127, which the
   model's normalisation maps to 0). Nothing is cropped, and an odd aspect ratio
   is never stretched.
"""
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000  # about 7000 x 5700; larger files are refused as possible decompression bombs
GREY = (127, 127, 127)


class ImageError(ValueError):
    """The file is not a photo we can read; the message says why, for a person."""


class ImageTooLargeError(ImageError):
    pass


class UnsupportedImageError(ImageError):
    pass


def _open(source):
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError):
            raise UnsupportedImageError("not an image format we can read (JPEG, PNG, GIF, WebP, BMP, TIFF work)") from None
        raise ImageTooLargeError(f"image has too many pixels (limit {MAX_PIXELS:,})") from None
    if im.width * im.height > MAX_PIXELS:
        raise ImageTooLargeError(f"image is {im.width}x{im.height}, over the {MAX_PIXELS:,}-pixel limit")
    return im


def _to_rgb(im):
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        scaled = np.asarray(im, dtype=np.float64) / 257.0  # 16-bit range onto 0..255
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "F":
        return Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, GREY)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return im.convert("RGB")


def decode_rgb(source):
    """Decode bytes, a path or a file object to an upright RGB PIL image at full size."""
    try:
        im = _open(source)
        im.seek(0)
        im = ImageOps.exif_transpose(im)
        return _to_rgb(im)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise ImageError(f"the image is damaged or truncated ({e})") from None


def letterbox(im, size):
    """Fit an RGB PIL image into size x size without cropping or stretching."""
    scale = size / max(im.width, im.height)
    w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    resized = im.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), GREY)
    canvas.paste(resized, ((size - w) // 2, (size - h) // 2))
    return canvas


def load_image(source, size):
    """Bytes, path or file object -> uint8 array (size, size, 3) ready for the model."""
    return np.asarray(letterbox(decode_rgb(source), size), dtype=np.uint8)
