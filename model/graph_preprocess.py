"""Pillow's preprocessing (model/preprocess.py) rebuilt from TensorFlow ops, for the SavedModel export.

Encoded photo bytes -> letterboxed uint8 RGB, pixel for pixel what `preprocess.load_image` gives
(Pillow 13, as pinned), except that EXIF orientation is not applied; see model/export.py for what
else is not mirrored. The resize is Pillow's antialiased bicubic (BICUBIC, reducing_gap=3.0): the
same box reduce() for large photos, the same coefficients in 22-bit fixed point, the same pass
order and rounding. tf.image.resize(method="bicubic", antialias=True) differs by up to 18 grey
levels at sharp edges, which moved probabilities by up to 0.011 on the contract test photos.
"""

from model.preprocess import GREY, MAX_PIXELS

PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (Resample.c)
REDUCING_GAP = 3.0  # preprocess.letterbox's Image.resize(..., reducing_gap=3.0)


def _bicubic_filter(tf, x):
    """Pillow's bicubic_filter (a = -0.5), term by term in float64."""
    a = -0.5
    x = tf.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def _resample_axis(tf, image, axis, out_size, in_extent):
    """Pillow's ImagingResample{Horizontal,Vertical}_8bpc along `axis` (1: columns, 0: rows) of int32 [h, w, c].

    `in_extent` (float64) is the source box's far edge (its near edge is 0), as Pillow's float box.
    Coefficients are computed as precompute_coeffs and normalize_coeffs_8bpc do (float64, then
    22-bit fixed point), the taps summed exactly and rounded half up and clipped as clip8 does, so
    the result is Pillow's, bit for bit.
    """
    in_size = tf.shape(image)[axis]
    scale = tf.cast(tf.cast(in_extent, tf.float32), tf.float64) / tf.cast(out_size, tf.float64)
    filterscale = tf.maximum(scale, 1.0)
    support = 2.0 * filterscale
    ksize = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale
    xmin = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)  # C (int) truncates toward zero
    xmax = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - xmin
    taps = tf.range(ksize)[None]
    valid = taps < xmax[:, None]
    weights = tf.where(
        valid,
        _bicubic_filter(tf, (tf.cast(taps + xmin[:, None], tf.float64) - center[:, None] + 0.5) * (1.0 / filterscale)),
        0.0,
    )
    total = tf.math.cumsum(weights, axis=1)[:, -1]  # a sequential sum, as C's loop
    weights = tf.where(total[:, None] != 0.0, weights / total[:, None], weights)
    scaled = weights * float(1 << PRECISION_BITS)
    fixed = tf.cast(tf.where(weights < 0, -0.5 + scaled, 0.5 + scaled), tf.int32)
    # Apply as a sparse (out x in) matrix in float64: every product and sum is an integer below 2^53,
    # so this is exactly Pillow's int32 sum, without materialising a tap per output pixel.
    rows = tf.broadcast_to(tf.range(out_size)[:, None], tf.shape(taps + xmin[:, None]))
    indices = tf.cast(
        tf.stack([tf.boolean_mask(rows, valid), tf.boolean_mask(taps + xmin[:, None], valid)], 1), tf.int64
    )
    matrix = tf.sparse.SparseTensor(
        indices, tf.cast(tf.boolean_mask(fixed, valid), tf.float64), tf.cast(tf.stack([out_size, in_size]), tf.int64)
    )
    x = tf.cast(image, tf.float64)
    if axis == 1:
        x = tf.transpose(x, [1, 0, 2])
    shape = tf.shape(x)
    acc = tf.sparse.sparse_dense_matmul(matrix, tf.reshape(x, [shape[0], -1]))
    acc = tf.reshape(acc, tf.stack([out_size, shape[1], shape[2]]))
    if axis == 1:
        acc = tf.transpose(acc, [1, 0, 2])
    out = tf.math.floordiv(acc + float(1 << (PRECISION_BITS - 1)), float(1 << PRECISION_BITS))
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.int32)


def _reduce(tf, image, fy, fx):
    """Pillow's Image.reduce((fx, fy)) of int32 [h, w, c]: block means, partial blocks at the far edges."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    oh, ow = (h + fy - 1) // fy, (w + fx - 1) // fx
    padded = tf.pad(image, [[0, oh * fy - h], [0, ow * fx - w], [0, 0]])
    sums = tf.reduce_sum(tf.reshape(padded, [oh, fy, ow, fx, -1]), axis=[1, 3])
    rows = tf.minimum(fy, h - tf.range(oh) * fy)
    cols = tf.minimum(fx, w - tf.range(ow) * fx)
    count = rows[:, None] * cols[None]  # pixels in each block
    # division_UINT32: (UINT32)(4294967296.0f / (256 * n)); amend = n / 2; out = (ss + amend) * multiplier >> 24
    multiplier = tf.cast(tf.constant(4294967296.0, tf.float32) / tf.cast(256 * count, tf.float32), tf.int64)
    out = (tf.cast(sums, tf.int64) + tf.cast(count // 2, tf.int64)[..., None]) * multiplier[..., None]
    return tf.cast(tf.bitwise.right_shift(out, 24), tf.int32)


def _resize_like_pillow(tf, image, height, width):
    """Pillow's Image.resize((width, height), BICUBIC, reducing_gap=3.0) of uint8 [h, w, c]: the same pixels."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    # Image.resize: factor = int(source / target / reducing_gap) or 1; reduce() first if either is > 1.
    fx = tf.maximum(tf.cast(tf.cast(w, tf.float64) / tf.cast(width, tf.float64) / REDUCING_GAP, tf.int32), 1)
    fy = tf.maximum(tf.cast(tf.cast(h, tf.float64) / tf.cast(height, tf.float64) / REDUCING_GAP, tf.int32), 1)
    x = tf.cast(image, tf.int32)
    x = tf.cond(tf.logical_or(fx > 1, fy > 1), lambda: _reduce(tf, x, fy, fx), lambda: x)
    # The resampling box after reduce() is (0, 0, w / fx, h / fy).
    box_w = tf.cast(w, tf.float64) / tf.cast(fx, tf.float64)
    box_h = tf.cast(h, tf.float64) / tf.cast(fy, tf.float64)

    def horizontal(image):
        return _resample_axis(tf, image, 1, width, box_w)

    def vertical(image):
        return _resample_axis(tf, image, 0, height, box_h)

    # Pillow 13's ImagingResampleInner runs the vertical pass first when the height shrinks by more
    # than twice as many pixels as the width (older Pillow always went horizontal first).
    shrink_h, shrink_w = tf.shape(x)[0] - height, tf.shape(x)[1] - width
    vertical_first = tf.logical_and(shrink_h > 0, shrink_h > shrink_w * 2)
    x = tf.cond(vertical_first, lambda: horizontal(vertical(x)), lambda: vertical(horizontal(x)))
    return tf.cast(x, tf.uint8)


def _to_rgb(tf, image):
    """[h, w, 1|2|3|4] uint8 -> [h, w, 3]: grey to RGB, alpha composited on neutral grey."""

    def composite(rgb, alpha):
        a = tf.cast(alpha, tf.float32)
        out = (tf.cast(rgb, tf.float32) * a + float(GREY[0]) * (255.0 - a)) / 255.0
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

    def grey():
        return tf.tile(image[..., :1], [1, 1, 3])

    branches = [
        grey,
        lambda: composite(tf.tile(image[..., :1], [1, 1, 3]), image[..., 1:2]),
        lambda: image[..., :3],
        lambda: composite(image[..., :3], image[..., 3:4]),
    ]
    return tf.switch_case(tf.shape(image)[-1] - 1, branches, default=grey)


def _check_pixels(tf, height, width):
    """preprocess.py's decompression-bomb limit, as an assertion the decoding waits for."""
    return tf.debugging.assert_less_equal(
        tf.cast(height, tf.int64) * tf.cast(width, tf.int64),
        tf.constant(MAX_PIXELS, tf.int64),
        message=f"image has too many pixels (limit {MAX_PIXELS:,})",
    )


JPEG_RATIOS = (1, 2, 4, 8)


def _jpeg_ratio_index(tf, height, width, size):
    """Index in JPEG_RATIOS of preprocess._open_scaled's DCT scale, as Pillow's JpegImageFile.draft picks it."""
    longer = tf.maximum(height, width)
    s = 2 * size / tf.cast(longer, tf.float64)
    req_w = tf.maximum(1, tf.cast(tf.round(tf.cast(width, tf.float64) * s), tf.int32))
    req_h = tf.maximum(1, tf.cast(tf.round(tf.cast(height, tf.float64) * s), tf.int32))
    scale = tf.minimum(width // req_w, height // req_h)
    index = tf.where(scale >= 8, 3, tf.where(scale >= 4, 2, tf.where(scale >= 2, 1, 0)))
    return tf.where(longer >= 8 * size, index, 0)


def _decode(tf, data, size):
    """Encoded photo -> uint8 [h, w, 3], checking the size from the header first where that is cheap."""

    def jpeg():
        shape = tf.io.extract_jpeg_shape(data)
        with tf.control_dependencies([_check_pixels(tf, shape[0], shape[1])]):
            # Pillow decodes with libjpeg's accurate integer DCT; TF's default is the fast one. A large
            # JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT, as preprocess.py asks Pillow to.
            branches = [
                lambda r=r: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE", ratio=r)
                for r in JPEG_RATIOS
            ]
            return tf.switch_case(_jpeg_ratio_index(tf, shape[0], shape[1], size), branches)

    def other():
        def png_header_check():  # IHDR: big-endian width and height at bytes 16..23
            size = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint8), tf.int64)
            width = ((size[0] * 256 + size[1]) * 256 + size[2]) * 256 + size[3]
            height = ((size[4] * 256 + size[5]) * 256 + size[6]) * 256 + size[7]
            with tf.control_dependencies([_check_pixels(tf, height, width)]):
                return tf.constant(True)

        is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")
        checked = tf.cond(is_png, png_header_check, lambda: tf.constant(True))
        with tf.control_dependencies([checked]):
            image = tf.io.decode_image(data, channels=0, expand_animations=False, dtype=tf.uint8)
        image.set_shape([None, None, None])
        with tf.control_dependencies([_check_pixels(tf, tf.shape(image)[0], tf.shape(image)[1])]):
            return _to_rgb(tf, image)

    image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def preprocess_graph(tf, data, size):
    """Encoded photo (scalar tf.string) -> uint8 [size, size, 3], like preprocess.load_image without EXIF."""
    image = _decode(tf, data, size)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    scale = size / tf.cast(tf.maximum(h, w), tf.float64)
    # Python's round() in preprocess.letterbox rounds half to even, as tf.round does.
    new_h = tf.maximum(1, tf.cast(tf.round(tf.cast(h, tf.float64) * scale), tf.int32))
    new_w = tf.maximum(1, tf.cast(tf.round(tf.cast(w, tf.float64) * scale), tf.int32))
    resized = _resize_like_pillow(tf, image, new_h, new_w)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas = tf.pad(resized, [[top, size - new_h - top], [left, size - new_w - left], [0, 0]], constant_values=GREY[0])
    return tf.ensure_shape(canvas, [size, size, 3])
