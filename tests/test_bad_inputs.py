"""Bad input through the API and the upload form: a clear 4xx (never a 500), nothing written to disk,
and the next good request still answered correctly."""

import io
import struct
import tempfile
import zlib

import numpy as np
import pytest
from PIL import Image

from app import MAX_FILES, MAX_UPLOAD_BYTES

pytestmark = pytest.mark.needs_data


def encode(im, fmt="PNG", **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo_like(mode="RGB", size=(120, 90)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def png_with_size(width, height):
    """A valid 1-bit PNG whose header claims width x height (a decompression bomb when large)."""
    png = encode(Image.new("1", (8, 8)))
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return png[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]


def corrupt_png():
    data = bytearray(encode(photo_like()))
    idat = data.index(b"IDAT")
    data[idat + 20 : idat + 60] = b"\x00" * 40
    return bytes(data)


def animated(fmt):
    frames = [photo_like(), photo_like().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_with_transparency():
    im = photo_like().convert("P")
    return encode(im, transparency=0)


HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200
JPEG = encode(photo_like(), "JPEG")

BAD = [  # (case, file name, bytes, status, words in the message)
    ("empty file", "empty.jpg", b"", 400, "empty"),
    ("text named .jpg", "notes.jpg", b"hello, this is text\n" * 10, 415, "not an image format"),
    (
        "PDF named .jpg",
        "paper.jpg",
        b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF",
        415,
        "not an image format",
    ),
    ("truncated JPEG", "cut.jpg", JPEG[: len(JPEG) // 2], 400, "damaged or truncated"),
    ("PNG with a corrupt chunk", "corrupt.png", corrupt_png(), 400, "damaged or truncated"),
    ("decompression bomb", "bomb.png", png_with_size(50000, 50000), 413, "too many pixels"),
    ("HEIC (not readable by Pillow)", "phone.heic", HEIC, 415, "not an image format"),
]

GOOD = [  # (case, file name, bytes)
    ("1x1 image", "dot.png", encode(Image.new("RGB", (1, 1), (200, 30, 30)))),
    ("extreme aspect ratio 4000x10", "strip.png", encode(photo_like(size=(4000, 10)))),
    (
        "16-bit greyscale",
        "grey16.png",
        encode(Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)),
    ),
    ("CMYK JPEG", "cmyk.jpg", encode(photo_like("CMYK"), "JPEG")),
    ("palette PNG with transparency", "palette.png", palette_with_transparency()),
    ("LA", "la.png", encode(photo_like("LA"))),
    ("RGBA", "rgba.png", encode(photo_like("RGBA"))),
    ("1-bit", "bits.png", encode(photo_like("1"))),
    ("animated GIF", "anim.gif", animated("GIF")),
    ("animated WebP", "anim.webp", animated("WEBP")),
]


@pytest.fixture()
def no_disk(tmp_path, monkeypatch):
    """Point temporary files at an empty folder; it must stay empty."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    assert list(folder.iterdir()) == [], "a request wrote to disk"


@pytest.fixture(scope="module")
def reference(scenes, sea_photo):
    return scenes.classifier.classify(scenes.classifier.load(sea_photo)[None])[0]


def post(client, url, files, **kw):
    data = {"image": [(io.BytesIO(content), name) for name, content in files]}
    return client.post(url, data=data, content_type="multipart/form-data", **kw)


def still_answers(client, sea_photo, reference):
    r = post(client, "/api/predict", [("sea.jpg", sea_photo)])
    assert r.status_code == 200 and r.get_json()["results"][0]["probabilities"] == reference["probabilities"]


@pytest.mark.parametrize("case, name, content, status, words", BAD, ids=[b[0] for b in BAD])
def test_bad_file(client, no_disk, sea_photo, reference, case, name, content, status, words):
    r = post(client, "/api/predict", [(name, content)])
    assert r.status_code == status, r.get_json()
    message = r.get_json()["error"]
    assert words in message and name in message
    page = post(client, "/", [(name, content)])
    assert page.status_code == status and words in page.get_data(as_text=True)
    still_answers(client, sea_photo, reference)


@pytest.mark.parametrize("case, name, content", GOOD, ids=[g[0] for g in GOOD])
def test_unusual_but_valid_images(client, no_disk, case, name, content):
    r = post(client, "/api/predict", [(name, content)])
    assert r.status_code == 200, r.get_json()
    result = r.get_json()["results"][0]
    assert len(result["probabilities"]) == 5 and all(0 <= p <= 1 for p in result["probabilities"].values())


def test_exif_rotated_photo_is_predicted_upright(client, sea_photo):
    upright = Image.open(io.BytesIO(sea_photo))
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated; viewers rotate it 90 degrees counter-clockwise back to upright
    rotated = encode(upright.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95, exif=exif)
    plain = encode(upright, "JPEG", quality=95)
    without_exif = encode(upright.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95)
    a, b, c = (
        post(client, "/api/predict", [("x.jpg", d)]).get_json()["results"][0]["probabilities"]
        for d in (rotated, plain, without_exif)
    )
    assert all(abs(a[l] - b[l]) < 0.03 for l in a), (a, b)
    assert max(abs(c[l] - b[l]) for l in c) > max(abs(a[l] - b[l]) for l in a)  # the EXIF tag is what fixed it


def test_upload_over_the_size_limit(client, no_disk):
    r = post(client, "/api/predict", [("huge.jpg", b"\xff" * (MAX_UPLOAD_BYTES + 1))])
    assert r.status_code == 413 and "10 MB" in r.get_json()["error"]
    assert post(client, "/", [("huge.jpg", b"\xff" * (MAX_UPLOAD_BYTES + 1))]).status_code == 413


def test_no_file_field_and_empty_selection(client):
    r = client.post("/api/predict", data={"other": "x"}, content_type="multipart/form-data")
    assert r.status_code == 400 and "no photo received" in r.get_json()["error"]
    r = client.post("/", data={"image": (io.BytesIO(b""), "")}, content_type="multipart/form-data")
    assert r.status_code == 400 and "no photo received" in r.get_data(as_text=True)
    r = client.post("/api/predict", data=b"raw body", content_type="application/octet-stream")
    assert r.status_code == 400


def test_too_many_files(client, sea_photo):
    r = post(client, "/api/predict", [(f"{i}.jpg", JPEG) for i in range(MAX_FILES + 1)])
    assert r.status_code == 400 and f"at most {MAX_FILES}" in r.get_json()["error"]
    r = post(client, "/api/predict", [(f"{i}.jpg", JPEG) for i in range(MAX_FILES)])
    assert r.status_code == 200 and len(r.get_json()["results"]) == MAX_FILES


@pytest.mark.parametrize(
    "name, shown",
    [
        ("../../etc/passwd.jpg", "passwd.jpg"),
        ("C:\\Users\\me\\beach.jpg", "beach.jpg"),
        ("a\x00b.jpg", "ab.jpg"),
        ("x" * 10240 + ".jpg", "x" * 77 + "..."),
    ],
)
def test_hostile_file_names(client, no_disk, name, shown):
    r = post(client, "/api/predict", [(name, JPEG)])
    assert r.status_code == 200 and r.get_json()["results"][0]["filename"] == shown


def test_non_utf8_form_data(client, sea_photo, reference):
    boundary = "XyZ"
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="note"\r\n\r\n\xff\xfe\xfa\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="\xff\xfe.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + JPEG + b"\r\n--XyZ--\r\n"
    )
    r = client.post("/api/predict", data=body, content_type=f"multipart/form-data; boundary={boundary}")
    # werkzeug drops a multipart body it cannot decode: the answer is the clear 400 for "no photo"
    assert r.status_code == 400 and "no photo received" in r.get_json()["error"]
    still_answers(client, sea_photo, reference)


@pytest.mark.parametrize(
    "method, url",
    [("put", "/api/predict"), ("delete", "/"), ("post", "/gallery"), ("post", "/api/health"), ("get", "/inspect")],
)
def test_wrong_methods(client, method, url):
    r = getattr(client, method)(url)
    assert r.status_code == 405
    if url.startswith("/api/"):
        assert "error" in r.get_json()


def test_inspect_with_a_decompression_bomb_is_400(client):
    import base64

    bomb = base64.b64encode(png_with_size(50000, 50000)).decode()
    r = client.post("/inspect", data={"pixels": bomb, "name": "x.png"})
    assert r.status_code == 400 and "malformed" in r.get_data(as_text=True)


def test_a_damaged_dataset_photo_is_422_not_500(tmp_path, miml_data):
    """/photo/N and its thumbnail name the photo that cannot be read; the other photos still show."""
    from app import create_app
    from app.scenes import Scenes

    (tmp_path / "original").mkdir()
    rows = (miml_data / "labels.csv").read_text().splitlines()[:3]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    for row in rows[1:]:
        name = row.split(",")[0]
        (tmp_path / "original" / name).write_bytes((miml_data / "original" / name).read_bytes())
    damaged = rows[2].split(",")[0]
    (tmp_path / "original" / damaged).write_bytes((miml_data / "original" / damaged).read_bytes()[:300])
    client = create_app(scenes=Scenes(data_dir=tmp_path)).test_client()
    for url, named in (("/photo/2", damaged), ("/photo/2/thumb.jpg", "2")):
        r = client.get(url)
        assert r.status_code == 422 and f"dataset photo {named} cannot be read" in r.get_data(as_text=True), url
    assert client.get("/photo/1").status_code == 200 and client.get("/photo/1/thumb.jpg").status_code == 200


def test_the_layer_browser_keeps_at_most_8_layer_models(scenes):
    c = scenes.classifier
    pixels = np.zeros((c.size, c.size, 3), np.uint8)
    spatial = [name for name, _, is_conv in c.layers() if is_conv][:12]
    for name in spatial:
        assert c.activations(pixels, name).ndim == 3
    assert c._layer_model.cache_info().currsize == 8 and c._layer_model.cache_info().maxsize == 8
