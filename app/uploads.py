"""Photos sent in a request: read in memory, checked, never written to disk."""
import io
import re

from flask import Request, current_app
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from model.preprocess import ImageError, ImageTooLargeError, UnsupportedImageError, decode_rgb

FIELD = "image"


class InMemoryRequest(Request):
    """Uploaded files stay in memory (requests are capped at MAX_CONTENT_LENGTH), never in temporary files."""

    def _get_file_stream(self, *args, **kwargs):
        return io.BytesIO()


def clean_filename(name):
    """A name safe to show: the last path part, no control characters, at most 80 characters."""
    name = re.split(r"[\\/]", name or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    return (name[:77] + "...") if len(name) > 80 else (name or "photo")


def uploaded_files(request):
    """[(clean name, bytes)] from the request's `image` field; 400 when there is none or too many."""
    files = [f for f in request.files.getlist(FIELD) if f.filename or f.content_length]
    if not files:
        raise BadRequest(f"no photo received: send one or more files in the form field '{FIELD}'")
    limit = current_app.config["MAX_FILES"]
    if len(files) > limit:
        raise BadRequest(f"too many photos in one request: {len(files)} sent, at most {limit} allowed")
    return [(clean_filename(f.filename), f.read()) for f in files]


def decode(name, data):
    """Upright RGB image, or the HTTP error that says what is wrong with this file."""
    if not data:
        raise BadRequest(f"{name}: the file is empty")
    try:
        return decode_rgb(data)
    except ImageTooLargeError as e:
        raise RequestEntityTooLarge(f"{name}: {e}") from None
    except UnsupportedImageError as e:
        raise UnsupportedMediaType(f"{name}: {e}") from None
    except ImageError as e:
        raise BadRequest(f"{name}: {e}") from None
