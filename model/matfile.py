"""The Kaggle MIML `.mat` file (MATLAB 5 format), read with bounded memory.

`scipy.io.loadmat` allocates what a file declares: a 1 MB file whose compressed `targets` declares 2^30 values
took a server to 15 GB. So the variables are walked here first: only `targets` and `class_name` are kept
(anything else, `bags` in Kaggle's file, is skipped unread), each is inflated with a byte budget, and every
array in them must declare a shape within MAX_ELEMENTS and be a numeric, character or cell array (the
known layout: no structs, objects or sparse matrices). Only then does scipy read them, from memory.
"""

import io
import struct
import zlib

MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 5, 6, 14, 15
CELL, CHAR, NUMERIC = 1, 4, range(6, 16)  # mxCELL_CLASS, mxCHAR_CLASS, double .. uint64
WANTED = ("targets", "class_name")
HEADER_BYTES = 128
MAX_INFLATED = 16 << 20  # bytes of the wanted variables, inflated (Kaggle's: about 100 kB)
MAX_ELEMENTS = 2_000_000  # values one array may declare (20,000 photos x 100 labels)
MAX_DEPTH = 3  # cells in cells


class MatError(ValueError):
    """The file is not the Kaggle layout, or declares more than the limits; the message says which."""


def _element(buf, pos, endian):
    """(type, data, position after it) of the data element at `pos` (the small 4-byte form too)."""
    if pos + 8 > len(buf):
        raise MatError("truncated (a data element's tag is cut off)")
    kind, nbytes = struct.unpack_from(endian + "II", buf, pos)
    if kind >> 16:  # small data element: type and size in the first 4 bytes, the data in the next 4
        kind, nbytes = kind & 0xFFFF, kind >> 16
        if nbytes > 4:
            raise MatError("malformed (a small data element longer than 4 bytes)")
        return kind, buf[pos + 4 : pos + 4 + nbytes], pos + 8
    end = pos + 8 + nbytes
    if end > len(buf):
        raise MatError("truncated (a data element runs past the end)")
    return kind, buf[pos + 8 : end], end + (-nbytes % 8)


def _matrix_head(body, endian):
    """(class, dims, name, position of the first data element) of a miMATRIX element's contents."""
    _, flags, pos = _element(body, 0, endian)
    kind, dims, pos = _element(body, pos, endian)
    if len(flags) < 4 or kind != MI_INT32 or not dims or len(dims) % 4:
        raise MatError("malformed (an array without flags or dimensions)")
    dims = struct.unpack(f"{endian}{len(dims) // 4}i", dims)
    _, name, pos = _element(body, pos, endian)
    return struct.unpack_from(endian + "I", flags)[0] & 0xFF, dims, name.decode("latin-1"), pos


def _count(name, dims):
    """The number of values `dims` declares; MatError past MAX_ELEMENTS."""
    count = 1
    for d in dims:
        count *= d
        if d < 0 or count > MAX_ELEMENTS:
            raise MatError(
                f"the array {name or '(a cell)'!r} declares the shape {'x'.join(map(str, dims))}, over the "
                f"limit of {MAX_ELEMENTS:,} values"
            )
    return count


def _check_matrix(buf, pos, endian, depth=0):
    """Check the miMATRIX element at `pos` (and the cells in it); -> the position after it."""
    kind, body, after = _element(buf, pos, endian)
    if kind != MI_MATRIX:
        raise MatError(f"not the Kaggle layout (a data element of type {kind} where an array belongs)")
    if not body:  # an empty array inside a cell
        return after
    cls, dims, name, p = _matrix_head(body, endian)
    count = _count(name, dims)
    if cls == CELL:
        if depth >= MAX_DEPTH:
            raise MatError("not the Kaggle layout (cells nested too deeply)")
        for _ in range(count):
            p = _check_matrix(body, p, endian, depth + 1)
    elif cls != CHAR and cls not in NUMERIC:
        raise MatError(f"not the Kaggle layout ({name!r} is a struct, object or sparse array)")
    return after


def _inflate(data, budget):
    """The element compressed in `data`, inflated to at most `budget` bytes; MatError past it."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, budget + 1)
    except zlib.error as e:
        raise MatError(f"damaged (a compressed variable cannot be inflated: {e})") from None
    if len(out) > budget or d.unconsumed_tail:
        raise MatError(f"its variables inflate to over {MAX_INFLATED:,} bytes")
    return out


def _head_of(compressed, endian):
    """(name, dims) of a compressed array, from its first few hundred inflated bytes only; None if it is not one."""
    try:
        head = zlib.decompressobj().decompress(compressed, 512)
        kind, nbytes = struct.unpack_from(endian + "II", head)
        return _matrix_head(head[8 : 8 + nbytes], endian)[2:0:-1] if kind == MI_MATRIX else None
    except (zlib.error, struct.error, MatError):
        return None  # not one we read: skipped


def wanted_variables(data):
    """An uncompressed MATLAB 5 file holding only the checked `targets` and `class_name` of file bytes `data`."""
    if len(data) < HEADER_BYTES or data[126:128] not in (b"IM", b"MI"):
        raise MatError("not a MATLAB 5 .mat file (MATLAB 7.3 / HDF5 files are not read)")
    endian = "<" if data[126:128] == b"IM" else ">"
    out, budget, pos = [data[:HEADER_BYTES]], MAX_INFLATED, HEADER_BYTES
    while pos + 8 <= len(data):
        kind, body, after = _element(data, pos, endian)
        if kind == MI_COMPRESSED:
            after = pos + 8 + len(body)  # compressed elements are not padded
            head = _head_of(body, endian)
            if head is None or head[0] not in WANTED:
                pos = after
                continue
            _count(*head)  # the declared shape, before anything is inflated
            element = _inflate(body, budget)
            budget -= len(element)
            element += b"\0" * (-len(element) % 8)
        elif kind == MI_MATRIX and _matrix_head(body, endian)[2] in WANTED:
            element = data[pos:after]
        else:
            pos = after
            continue
        _check_matrix(element, 0, endian)
        out.append(element)
        pos = after
    return b"".join(out)


def read_kaggle_mat(data):
    """{"targets": array, "class_name": array} from the bytes of a Kaggle .mat file; MatError when refused."""
    from scipy.io import loadmat

    checked = wanted_variables(data)
    try:
        return loadmat(io.BytesIO(checked))
    except Exception as e:  # scipy raises several types for damaged files
        raise MatError(f"cannot be read ({e})") from None
