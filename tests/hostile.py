"""Hostile files built in memory for the bad-input tests: ZIPs, `.mat` bombs, CSV row bombs."""

import csv
import io
import struct
import warnings
import zipfile
import zlib

import numpy as np
from PIL import Image


def zip_bytes(members, method=zipfile.ZIP_DEFLATED):
    """A ZIP of {name: bytes} (a list of pairs keeps repeated names)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": meant, in the test of repeated names
        for name, data in members.items() if isinstance(members, dict) else members:
            zf.writestr(name, data)
    return buf.getvalue()


def jpeg(seed=0, size=(64, 48)):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def labels_csv(rows, header=("image", "a", "b")):
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *rows])
    return out.getvalue().encode()


def good_members(n=4, prefix=""):
    """A small valid dataset: labels.csv and n photos, labels a and b."""
    rows = [(f"{i}.jpg", i % 2, 1 - i % 2) for i in range(1, n + 1)]
    return {
        f"{prefix}labels.csv": labels_csv(rows),
        **{f"{prefix}original/{r[0]}": jpeg(i) for i, r in enumerate(rows)},
    }


def kaggle_mat(n=4, names=("desert", "sea")):
    """The Kaggle layout's .mat, compressed: targets (labels x photos, -1/+1), class_name (a cell of names)."""
    from scipy.io import savemat

    targets = np.where(np.arange(len(names) * n).reshape(len(names), n) % 3, 1, -1).astype(np.float64)
    cells = np.empty((len(names), 1), dtype=object)
    cells[:, 0] = list(names)
    buf = io.BytesIO()
    savemat(buf, {"targets": targets, "class_name": cells, "bags": np.zeros((n, 1))}, do_compression=True)
    return buf.getvalue()


def kaggle_zip(mat, n=4):
    return zip_bytes({"processed/miml data.mat": mat, **{f"original/{i}.jpg": jpeg(i) for i in range(1, n + 1)}})


def _element(kind, data):
    return struct.pack("<II", kind, len(data)) + data + b"\0" * (-len(data) % 8)


def mat_bomb(log2_values=30):
    """A MATLAB 5 file of about 1 MB whose compressed `targets` is 1 x 2^log2_values int8 zeros (the issue's 33 kB
    ZIP): the deflate stream is one block of 1 MiB of zeros, repeated (blocks after a full flush stand alone)."""
    n = 1 << log2_values
    head = (
        _element(6, struct.pack("<II", 8, 0))  # array flags: int8 class
        + _element(5, struct.pack("<ii", 1, n))  # dimensions 1 x n
        + _element(1, b"targets")
        + struct.pack("<II", 1, n)  # miINT8 data element of n bytes
    )
    matrix_tag = struct.pack("<II", 14, len(head) + n)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = c.compress(matrix_tag + head) + c.flush(zlib.Z_FULL_FLUSH)
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = block.compress(bytes(1 << 20)) + block.flush(zlib.Z_FULL_FLUSH)
    adler = zlib.adler32(matrix_tag + head)
    a, b = adler & 0xFFFF, adler >> 16
    b = (b + n * a) % 65521  # adler32 over n more zero bytes: a stays, b grows by a each byte
    stream = b"\x78\xda" + start + zeros * (n >> 20) + b"\x03\x00" + struct.pack(">I", (b << 16) | a)
    header = b"MATLAB 5.0 MAT-file, hostile".ljust(116) + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    return header + struct.pack("<II", 15, len(stream)) + stream


def csv_row_bomb(mib=32):
    """labels.csv of `mib` MiB of 'a,0' rows (a ZIP of about 32 kB)."""
    return b"image,x\n" + b"a,0\n" * (mib << 18)


def patched(zip_data, name, local=None, central=None):
    """The ZIP with bytes of `name`'s local header and central directory entry overwritten:
    {offset in the header: bytes}, e.g. the flags (6 / 8), the method (8 / 10) or the CRC (14 / 16)."""
    data, encoded = bytearray(zip_data), name.encode()
    for signature, name_at, changes in ((b"PK\x03\x04", 30, local), (b"PK\x01\x02", 46, central)):
        at = data.index(signature)
        while data[at + name_at : at + name_at + len(encoded)] != encoded:
            at = data.index(signature, at + 4)
        for offset, value in (changes or {}).items():
            data[at + offset : at + offset + len(value)] = value
    return bytes(data)


def png_claiming(width, height):
    """A PNG whose header claims width x height (the pixel data is one 8x8 block: only the header is read)."""
    buf = io.BytesIO()
    Image.new("1", (8, 8)).save(buf, "PNG")
    png = buf.getvalue()
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return png[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]


class PeakRSS:
    """The most the process's resident memory grows while the block runs, sampled every 2 ms (bytes)."""

    def __enter__(self):
        import threading

        self.start, self.peak, self._done = self.rss(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def rss():
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._done.wait(0.002):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.growth = self.peak - self.start
