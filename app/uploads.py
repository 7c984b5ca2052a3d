"""Photos sent in a request: read in memory, checked, never written to disk."""

import io
import re
from contextlib import contextmanager

from flask import Request, current_app
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from model.inference import ImageError, ImageTooLargeError, UnsupportedImageError

FIELD = "image"
# Decoded pixels in one request, summed over its photos (a large JPEG counts at its reduced decoding size,
# 12 MP phone photos count about 0.25 MP each). Photos are decoded one at a time, so this bounds the time
# a request takes more than its memory.
MAX_REQUEST_PIXELS = 100_000_000


class InMemoryRequest(Request):
    """Uploaded files stay in memory (requests are capped at MAX_CONTENT_LENGTH), never in temporary files."""

    def _get_file_stream(self, *args, **kwargs):
        return io.BytesIO()


def clean_filename(name):
    """A name safe to show: the last path part, no control characters, at most 80 characters."""
    name = re.split(r"[\\/]", name or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    return (name[:77] + "...") if len(name) > 80 else (name or "photo")


def uploaded_files(request, classifier):
    """[(clean name, bytes)] from the request's `image` field; 400 when there is none or too many,
    413 when their decoded pixels add up to more than MAX_REQUEST_PIXELS."""
    files = [f for f in request.files.getlist(FIELD) if f.filename or f.content_length]
    if not files:
        raise BadRequest(f"no photo received: send one or more files in the form field '{FIELD}'")
    limit = current_app.config["MAX_FILES"]
    if len(files) > limit:
        raise BadRequest(f"too many photos in one request: {len(files)} sent, at most {limit} allowed")
    named = [(clean_filename(f.filename), f.read()) for f in files]
    total = 0
    for _, data in named:
        try:
            total += classifier.decoded_pixels(data)
        except ImageError:
            pass  # that file's own error is reported when it is analysed
    if total > MAX_REQUEST_PIXELS:
        raise RequestEntityTooLarge(
            f"these photos decode to {total:,} pixels in all, over the limit of "
            f"{MAX_REQUEST_PIXELS:,} a request: send fewer at a time"
        )
    return named


@contextmanager
def photo_errors(name):
    """Turn the model's image errors into the HTTP error that says what is wrong with file `name`."""
    try:
        yield
    except ImageTooLargeError as e:
        raise RequestEntityTooLarge(f"{name}: {e}") from None
    except UnsupportedImageError as e:
        raise UnsupportedMediaType(f"{name}: {e}") from None
    except ImageError as e:
        raise BadRequest(f"{name}: {e}") from None


def checked(name, data):
    """400 for an empty file, else the bytes."""
    if not data:
        raise BadRequest(f"{name}: the file is empty")
    return data


def analyse(classifier, name, data):
    """classifier.analyse of one uploaded file, with HTTP errors."""
    with photo_errors(name):
        return classifier.analyse(checked(name, data))


def load(classifier, name, data):
    """The model input of one uploaded file, with HTTP errors."""
    with photo_errors(name):
        return classifier.load(checked(name, data))
