"""Streaming batch prediction: paths in, one result per path out, in the same order.

Photos are decoded by `model.preprocess.load_image` in a thread pool (Pillow releases
the GIL) while the model runs on the previous batch. At most `ahead` photos wait
decoded, so memory stays flat however many photos there are; paths come from a
generator and each result is yielded as soon as its batch is done.
"""

import os
import stat
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from model.preprocess import ImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif"}
# Decoding takes 1-2 ms a photo against 10-20 ms for the forward pass on this CPU, so on a CPU the thread
# count hardly matters (benchmarks/batch.py); more threads keep up with a faster forward pass.
WORKERS = min(4, os.cpu_count() or 1)


def expand(paths):
    """Files as given; folders walked for image files, depth first, each folder in name order.

    Same order as sorting all the paths, but only the names of the folders being walked are held.
    Symlinked folders are not followed (as `Path.rglob`). An image-named entry whose type cannot be
    read (a symlink loop) is yielded, so that reading it gives its error.
    """
    for path in map(Path, paths):
        yield from _walk(path) if path.is_dir() else [path]


def _walk(top):
    """Iterative, with a stack of folder listings, so that no folder depth hits Python's recursion limit."""
    stack = [_listing(top)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry.is_dir(follow_symlinks=False):
            stack.append(_listing(entry.path))
        elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and _is_file_or_unreadable(entry):
            yield Path(entry.path)


def _listing(folder):
    return iter(sorted(os.scandir(folder), key=lambda e: e.name))


def _is_file_or_unreadable(entry):
    try:
        return entry.is_file()
    except OSError:  # e.g. a symlink loop (ELOOP): reading it reports why
        return True


def open_regular(path):
    """The file opened for reading, without blocking, if it is a regular file; else OSError("not a regular file"):
    a FIFO or a device given as a path would never end. A missing file says so, rather than "damaged"."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError("not a regular file")
    return open(fd, "rb")


def why(error):
    """The message of an ImageError or OSError, as an error row gives it ("No such file or directory")."""
    return getattr(error, "strerror", None) or str(error)


def _load(classifier, path):
    """(image, None) or (None, why it cannot be read)."""
    try:
        with open_regular(path) as f:
            return classifier.load(f), None
    except (ImageError, OSError) as e:
        return None, why(e)


def decoded(classifier, paths, workers=WORKERS, ahead=64):
    """Yield (path, image, error) in order, decoding up to `ahead` photos in parallel ahead of the consumer."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    window = deque()
    try:
        for path in paths:
            window.append((path, pool.submit(_load, classifier, path)))
            if len(window) > ahead:
                path, future = window.popleft()
                yield path, *future.result()
        while window:
            path, future = window.popleft()
            yield path, *future.result()
    finally:
        pool.shutdown(cancel_futures=True)


def predict_paths(classifier, paths, batch_size=32, workers=WORKERS):
    """Yield one result dict per path, in order: {'path', 'probabilities', 'predicted'} or {'path', 'error'}.

    Every forward pass gets `batch_size` readable photos (fewer only at the end); a file that
    cannot be read waits for its neighbours' batch so that the order is kept.
    """
    pending, images = [], []

    def flush():
        results = iter(classifier.classify(images, batch_size) if images else [])
        for path, error in pending:
            yield {"path": str(path), "error": error} if error is not None else {"path": str(path), **next(results)}
        pending.clear(), images.clear()

    for path, image, error in decoded(classifier, paths, workers, ahead=2 * batch_size):
        pending.append((path, error))
        if image is not None:
            images.append(image)
            if len(images) == batch_size:
                yield from flush()
    yield from flush()
