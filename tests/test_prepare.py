"""The steps of MNIST-style preparation, each against what it promises (prepare.py)."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnistlab.base import prepare
from mnistlab.base.errors import PredictionError
from mnistlab.base.prepare import load_image, paper_level, prepare_image, writing


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


# ---------------------------------------------------------------------------
# Blobs of ink: the digit is kept, dust and what touches the edge are dropped


def test_writing_keeps_the_digit_and_drops_specks_and_blobs_touching_the_edge():
    ink = np.zeros((100, 120), np.float32)  # at most BLOB_SIZE a side: blobs are found at full size
    ink[20:80, 50:62] = 255  # the digit: a bar of 720 pixels
    ink[10:13, 10:13] = 255  # dust: 9 pixels, under SPECK (5%) of the digit
    ink[85:100, 0:30] = 200  # the shadow's corner, touching the picture's edge
    out = writing(ink)
    np.testing.assert_array_equal(out[20:80, 50:62], 255)
    assert out[10:13, 10:13].max() == 0 and out[85:100, 0:30].max() == 0
    assert out.sum() == ink[20:80, 50:62].sum()


def test_a_blob_touching_the_edge_is_kept_when_it_holds_nearly_all_the_ink():
    ink = np.zeros((100, 100), np.float32)
    ink[0:70, 40:55] = 255  # a digit cut by the top edge of the photo
    ink[90:92, 10:12] = 255  # and a speck: the rest holds less than EDGE_SHARE of the ink
    out = writing(ink)
    np.testing.assert_array_equal(out[0:70, 40:55], 255)
    assert out[90:92, 10:12].max() == 0  # still dust next to the digit


def test_pixels_touching_at_a_corner_belong_to_the_same_blob():
    ink = np.zeros((100, 100), np.float32)
    ink[30:60, 30:60] = 255  # 900 pixels
    ink[60:63, 60:63] = 255  # 9 pixels touching it only at the corner (59, 59)-(60, 60): not a speck
    ink[70:73, 75:78] = 255  # 9 pixels apart: a speck
    out = writing(ink)
    np.testing.assert_array_equal(out[60:63, 60:63], 255)
    assert out[70:73, 75:78].max() == 0


def test_blobs_are_found_on_a_shrunk_copy_and_the_kept_ink_is_unchanged_at_full_size():
    ink = np.zeros((600, 800), np.float32)  # shrunk to 96x128 for finding blobs
    ink[100:500, 380:430] = 255
    ink[100:500, 400] = 240  # detail inside the digit survives as it was
    ink[550:556, 100:106] = 255  # dust
    out = writing(ink)
    np.testing.assert_array_equal(out[100:500, 380:430], ink[100:500, 380:430])
    assert out[550:556, 100:106].max() == 0


# ---------------------------------------------------------------------------
# The paper's level: a morphological opening


def opening_by_hand(x: np.ndarray, size: int) -> np.ndarray:
    """Minimum then maximum over size x size windows, edges repeated: the definition, window by window."""
    half = size // 2
    for reduce in (np.min, np.max):
        padded = np.pad(x, half, mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size))
        x = reduce(windows, axis=(-2, -1))
    return x


def test_the_paper_level_is_the_opening_by_windows_a_quarter_of_the_picture_wide():
    rng = np.random.default_rng(0)
    h, w = 90, 120  # under OPENING_SIZE: no shrinking, so the definition applies pixel for pixel
    yy, xx = np.mgrid[0:h, 0:w]
    grey = (40 + 0.5 * xx + 20 * (yy > 60) + rng.normal(0, 2, (h, w))).astype(np.float32)  # light and a shadow edge
    grey[20:70, 50:56] += 150  # a bright stroke
    size = 2 * round(prepare.PAPER_WINDOW * w / 2) + 1
    np.testing.assert_array_equal(paper_level(grey), opening_by_hand(grey, size))


def test_the_paper_level_follows_uneven_light_under_the_strokes_of_a_big_picture():
    h, w = 384, 512
    yy, xx = np.mgrid[0:h, 0:w]
    paper = (30 + 60 * xx / w + 20 * yy / h).astype(np.float32)
    grey = paper.copy()
    grey[80:300, 240:262] += 160  # a stroke 22 pixels wide
    level = paper_level(grey)
    assert level.dtype == np.float32 and level.shape == (h, w)
    # Grey levels: the stroke is gone, the gradient kept. (Within half a window of
    # the border an opening falls short of a slope rising towards it.)
    inside = (slice(70, h - 70), slice(70, w - 70))
    assert np.abs(level - paper)[inside].max() < 3


def test_flat_paper_is_its_own_level_everywhere():
    grey = np.zeros((280, 280), np.float32)  # a canvas export: paper of one exact level
    grey[40:240, 100:130] = 255
    grey[40:70, 60:220] = 255
    np.testing.assert_array_equal(paper_level(grey), 0)


def zero_paper_pictures(count: int, seed: int = 0):
    """Pictures on paper at exactly 0 (a canvas once its ink is bright), any size up to WORK_SIZE,
    with bars of ink as thin as a pen or wider than the paper's window."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        h, w = rng.integers(1, prepare.WORK_SIZE + 1, 2)
        grey = np.zeros((h, w), np.float32)
        for _ in range(rng.integers(0, 5)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            grey[y:y + rng.integers(1, h // 2 + 2), x:x + rng.integers(1, w // 2 + 2)] = rng.uniform(1, 255)
        yield grey


def test_flat_paper_found_at_once_has_exactly_the_level_of_the_full_opening(monkeypatch):
    pictures = list(zero_paper_pictures(300))
    pictures.append(np.pad(np.full((40, 40), 1e-40, np.float32), 20))  # tiny levels: no shortcut
    fast = [paper_level(grey) for grey in pictures]
    monkeypatch.setattr(prepare, "_paper_at_zero_everywhere", lambda grey, size: False)
    slow = [paper_level(grey) for grey in pictures]
    assert any(level.any() for level in slow) and any(not level.any() for level in slow)  # both kinds
    for a, b in zip(fast, slow):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_which_shrunk_pixels_hold_any_ink_is_exactly_what_shrinking_says():
    rng = np.random.default_rng(1)
    for _ in range(300):
        h, w = rng.integers(1, prepare.WORK_SIZE + 1, 2)
        mask = rng.random((h, w)) < rng.random() ** 4  # from a few pixels to nearly all
        expected = prepare._shrink(mask.astype(np.float32), prepare.BLOB_SIZE) > 0
        got = prepare._shrunk_any(mask, prepare.BLOB_SIZE)
        assert got.shape == expected.shape and np.array_equal(got, expected)


def test_the_kept_blobs_grow_back_to_full_size_exactly_as_pillow_resamples_them():
    rng = np.random.default_rng(2)
    for _ in range(300):
        (h, w), (new_h, new_w) = rng.integers(1, prepare.BLOB_SIZE + 1, 2), rng.integers(1, prepare.WORK_SIZE + 1, 2)
        mask = rng.random((h, w)) < 0.5
        expected = Image.fromarray(mask.astype(np.uint8)).resize((new_w, new_h), Image.Resampling.NEAREST)
        got = mask[prepare._nearest(h, new_h, 0)][:, prepare._nearest(w, new_w, 1)]
        assert np.array_equal(got, np.asarray(expected).astype(bool))


def test_centring_by_mass_uses_exactly_scipys_centre_of_mass():
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for _ in range(300):
        h, w = rng.integers(1, prepare.BOX + 1, 2)
        box = (rng.random((h, w)) * 255 * (rng.random((h, w)) < 0.4)).astype(np.float32)
        box[rng.integers(0, h), rng.integers(0, w)] = 200  # some ink
        cy, cx = ndimage.center_of_mass(box)
        top = int(np.clip(round(prepare.CENTRE - cy), 0, prepare.SIZE - h))
        left = int(np.clip(round(prepare.CENTRE - cx), 0, prepare.SIZE - w))
        expected = np.zeros((prepare.SIZE, prepare.SIZE), np.float32)
        expected[top:top + h, left:left + w] = box
        assert np.array_equal(prepare.centre_by_mass(box), expected)


def test_stroke_width_counts_the_outline_at_the_picture_edge_too():
    rng = np.random.default_rng(4)
    for _ in range(300):
        ink = (rng.random(tuple(rng.integers(1, 60, 2))) < rng.random()) * np.float32(255)
        inked = np.pad(ink > 127.5, 1)  # the definition: an outline all round, the edge included
        outline = (inked[1:] != inked[:-1]).sum() + (inked[:, 1:] != inked[:, :-1]).sum()
        assert prepare.stroke_width(ink) == 2 * float(inked.sum()) / max(int(outline), 1)


# ---------------------------------------------------------------------------
# The median used for the paper's level and grain


@pytest.mark.parametrize("n", [1, 2, 7, 10, 1001, 1000])
def test_median_is_numpys_median_for_any_mix_of_values(n):
    rng = np.random.default_rng(n)
    spread = rng.normal(0, 5, n).astype(np.float32)
    mostly_paper = np.where(rng.random(n) < 0.9, 0, rng.uniform(50, 255, n)).astype(np.float32)
    half_paper = np.concatenate([np.zeros(n // 2), rng.uniform(1, 2, n - n // 2)]).astype(np.float32)
    white_paper = 255 - mostly_paper  # a canvas before its ink is made bright: most values the highest
    for x in (spread, mostly_paper, half_paper, white_paper, np.full(n, 3.5, np.float32), spread.reshape(1, -1)):
        assert prepare._median(x) == pytest.approx(float(np.median(x)), abs=1e-6)


# numpy 2.4 interpolates a float32 percentile in float32, as _percentile does; numpy 2.2 (the last for
# Python 3.10) in float64, a few float32 steps away (relative 3e-7 seen).
FLOAT32_LERP = tuple(int(v) for v in np.__version__.split(".")[:2]) >= (2, 4)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 11, 999, 1000, 4097])
def test_the_ink_level_percentile_is_numpys(n):
    rng = np.random.default_rng(n)
    for x in (rng.uniform(0, 300, n), rng.normal(100, 30, n), rng.integers(0, 4, n), rng.exponential(50, n),
              np.full(n, 127.5)):
        x = x.astype(np.float32)
        for q in (90, 50, 10):
            ours, numpys = prepare._percentile(x.copy(), q), np.percentile(x, q)
            if FLOAT32_LERP:
                assert ours == float(numpys)
            else:
                assert ours == pytest.approx(float(numpys), rel=1e-6)


# ---------------------------------------------------------------------------
# Reading: big JPEG photos are decoded small


def photo(size: tuple[int, int]) -> Image.Image:
    """Dark ink on light paper, RGB."""
    w, h = size
    image = Image.new("RGB", size, (215, 210, 200))
    ImageDraw.Draw(image).line([(0.4 * w, 0.2 * h), (0.6 * w, 0.2 * h), (0.45 * w, 0.8 * h)],
                               fill=(30, 30, 60), width=round(0.05 * h), joint="curve")
    return image


def jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def test_a_big_jpeg_is_decoded_in_grey_at_a_scale_that_keeps_the_work_size():
    data = jpeg(photo((2400, 1800)))
    image = load_image(io.BytesIO(data))
    assert image.mode == "L" and image.size == (600, 450)  # 1/4: 1/8 would be under WORK_SIZE (512)
    assert load_image(io.BytesIO(jpeg(photo((1200, 1600))))).size == (600, 800)  # portrait: 1/2
    assert load_image(io.BytesIO(jpeg(photo((500, 400))))).size == (500, 400)  # small: full size
    with Image.open(io.BytesIO(data)) as full:
        full.load()
        assert mean_difference(prepare_image(image), prepare_image(full)) < 3


def test_a_big_jpeg_stored_sideways_is_still_turned_by_its_exif_tag():
    upright = photo((2400, 1800))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the viewer rotates 90 degrees clockwise
    stored = load_image(io.BytesIO(jpeg(upright.transpose(Image.Transpose.ROTATE_90), exif=exif)))
    assert stored.size == (450, 600)
    expected = prepare_image(load_image(io.BytesIO(jpeg(upright))))
    assert mean_difference(prepare_image(stored), expected) < 3


def test_the_decompression_bomb_limit_applies_to_the_full_size_of_a_jpeg(monkeypatch):
    data = jpeg(photo((2400, 1800)))  # decoded at 600x450, far under the limit set below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2400 * 1800 // 3)  # beyond twice the limit: PIL's error
    with pytest.raises(PredictionError, match="decompression bomb"):
        load_image(io.BytesIO(data), name="big.jpg")


def test_growing_the_writing_mask_by_one_pixel_is_exactly_a_3x3_maximum_filter():
    from scipy import ndimage

    from mnistlab.base.prepare import _dilate

    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(1, 140, 2)
        mask = rng.random((h, w)) < rng.random() * 0.3
        assert np.array_equal(_dilate(mask), ndimage.maximum_filter(mask, size=3))


def test_a_grey_png_of_a_grey_canvas_is_prepared_as_its_rgba_export_to_the_bit():
    """The Draw view sends its canvas as a one-channel PNG (static/png.js) instead of the browser's RGBA
    export: for an opaque canvas whose pixels are grey (R = G = B), both are the same picture."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        big = Image.new("L", (1120, 1120), 255)
        draw = ImageDraw.Draw(big)
        for _stroke in range(rng.integers(1, 4)):
            points = [tuple(int(v) for v in rng.integers(150, 970, 2)) for _ in range(rng.integers(2, 6))]
            draw.line(points, fill=int(rng.integers(0, 60)), width=int(rng.integers(40, 110)), joint="curve")
        grey = big.resize((280, 280), Image.Resampling.BOX)  # antialiased edges: many grey levels
        rgba = Image.merge("RGBA", (grey, grey, grey, Image.new("L", grey.size, 255)))
        sent = []
        for image in (grey, rgba):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            sent.append(prepare_image(load_image(io.BytesIO(buffer.getvalue()))))
        assert np.array_equal(*sent)
