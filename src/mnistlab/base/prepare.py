"""Image preparation: any picture of one character made to look like an MNIST digit.

A network trained on MNIST has only seen light ink on a black field, the digit
fitted into a 20x20 box (aspect ratio kept) and placed in 28x28 so that its
centre of mass is at the centre. A phone photo or a canvas export is dark ink
on white (or on nothing), at any size and position, on unevenly lit paper.
`prepare_image` turns any such picture into that form; it is the one
preparation used by `mnistlab predict`, the server and anything else that
classifies people's images. Its steps, each a function below: grey levels (EXIF
rotation applied, transparency laid on paper), polarity (ink made bright), the
paper's level removed (gradients and shadows too), dust and shadow residue
dropped, cropped to the ink, fitted into 20x20 (thin pen strokes thickened),
centred by mass in 28x28.

numpy, Pillow and scipy.ndimage only: no torch, no checkpoints, no figures.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from .errors import PredictionError
from .files import NotRegularFile, display_name, open_regular

SIZE = 28  # MNIST images are 28x28 ...
BOX = 20  # ... with the digit fitted into a 20x20 box ...
CENTRE = SIZE / 2  # ... and its centre of mass at pixel index 14: MNIST's measure 14.00 (rows), 14.01 (columns)
# Big pictures are shrunk (area averaging) so that the longer side is at most this
# many pixels: time and memory stay bounded and sensor noise averages out. A digit
# filling a twentieth of the picture's width still spans more than BOX pixels.
WORK_SIZE = 512
# Pictures are decoded only up to this many pixels (a JPEG's after `_draft` has reduced its
# scale; other formats decode every pixel): a 24-megapixel phone photo (5712x4284) fits. The
# limit is checked from the file's header, before decoding, and bounds the time and memory one
# picture may cost; PIL's own decompression-bomb limit (89 megapixels) is kept beyond it.
MAX_PIXELS = 25_000_000
# Ink must differ from the paper by this many grey levels (of 255), else: no ink.
MIN_CONTRAST = 24.0
# Pixels within this fraction of the grey range from an end count as near that end.
EXTREME = 0.25
# The paper's level is found with windows this fraction of the picture's longer
# side (wider than any stroke, narrower than shadows), on a copy at most
# OPENING_SIZE pixels a side: light and the soft edges of shadows vary slowly, so
# a finer copy costs time without changing the results.
PAPER_WINDOW = 0.25
OPENING_SIZE = 128
# What is left of the paper is set to zero below this fraction of the ink level
# and below this many standard deviations of the paper's grain.
FAINT = 0.1
NOISE_SIGMAS = 4.0
# MNIST's thinnest strokes in 28x28 pixels (`stroke_width`: 5th percentile of the
# test set; median 2.0, 95th percentile 3.1). Thinner strokes are thickened to this.
MIN_STROKE = 1.3
# Blobs of ink are found on a copy at most BLOB_SIZE pixels a side. Blobs smaller
# than SPECK of the largest are dust; blobs touching the picture's edge are dropped
# when the others hold at least EDGE_SHARE of the ink.
BLOB_SIZE = 128
SPECK = 0.05
EDGE_SHARE = 0.1
# The EXIF tag saying how a photo is rotated (values 2 to 8 ask for a transposition).
ORIENTATION = 0x0112
# 8-connectivity: pixels touching at a corner belong to the same blob (a slanted
# stroke one pixel wide stays one blob).
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------------------
# Reading images

def load_image(source: str | bytes | os.PathLike | IO[bytes], name: str | None = None):
    """Open and decode an image file (or binary file object) fully; PredictionError if unusable.

    Only a regular file is opened: a FIFO, a device or a folder named like an
    image is refused by name (opening a FIFO would wait for a writer forever).
    A JPEG is decoded as preparation needs it (see `_draft`): in grey, and a big
    one at a reduced scale. A picture that would decode to more than MAX_PIXELS is
    refused from its header (TooManyPixels) before any pixel is decoded. PIL's
    decompression-bomb limit (Image.MAX_IMAGE_PIXELS) is kept, checked on the
    picture's full size, and crossing it is an error rather than a warning.
    """
    if isinstance(source, (str, bytes, os.PathLike)):
        name = name or display_name(source)
        with _opened(source, name) as f:
            return _decode(f, name)
    return _decode(source, name or display_name(str(getattr(source, "name", "image"))))


def _opened(path: str | bytes | os.PathLike, name: str) -> IO[bytes]:
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise PredictionError("no such file", name) from None
    except NotRegularFile as e:
        raise PredictionError(f"{e.strerror}, not an image", name) from None
    except PermissionError:
        raise PredictionError("permission denied", name) from None
    except OSError as e:
        raise PredictionError(f"cannot read ({e.strerror or e})", name) from None
    except ValueError as e:  # a NUL byte in the name
        raise PredictionError(f"not a file name ({e})", name) from None


class TooManyPixels(PredictionError):
    """A picture larger than MAX_PIXELS, refused before it is decoded."""


def _decode(f: IO[bytes], name: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as image:  # reads the header only
                _draft(image)
                _check_pixels(image, name)
                image.load()  # decoding is lazy: a truncated file only fails here; the pixels stay
    except TooManyPixels:
        raise
    except UnidentifiedImageError:
        raise PredictionError("not an image (or a format Pillow cannot read)", name) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PredictionError(f"refused as a possible decompression bomb ({e})", name) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure means a corrupt file
        raise PredictionError(f"truncated or corrupt image ({str(e) or type(e).__name__})", name) from None
    return image


def _check_pixels(image: Image.Image, name: str) -> None:
    """TooManyPixels when decoding `image` (at the scale `_draft` chose) would give more than MAX_PIXELS."""
    w, h = image.size
    if w * h > MAX_PIXELS:
        raise TooManyPixels(f"too large to decode: {w}x{h} pixels ({w * h / 1e6:.1f} megapixels), more than "
                            f"the limit of {MAX_PIXELS / 1e6:g}; scale the picture down (one character needs "
                            "far fewer pixels)", name)


def _draft(image: Image.Image) -> None:
    """Ask the JPEG decoder for grey levels at the smallest scale of 1/2, 1/4 or 1/8
    that keeps the picture's longer side at least WORK_SIZE pixels.

    Preparation works on grey at most WORK_SIZE pixels a side anyway. At 1/s scale
    libjpeg inverse-transforms only the lowest frequencies of each 8x8 block (an
    average over s x s pixels) and skips the colour conversion: several times less
    work than decoding every pixel of a 12-megapixel photo and averaging most of
    them away. Other formats ignore the request and decode in full.
    """
    w, h = image.size
    image.draft("L", (WORK_SIZE, 1) if w >= h else (1, WORK_SIZE))


def _grey(image: Any) -> np.ndarray:
    """Grey levels as float32 (H, W) in 0..255, transparent pixels turned into paper."""
    if isinstance(image, np.ndarray):
        array = image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image
        if array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8:
            return _grey(Image.fromarray(array))
        if array.ndim != 2 or array.dtype.kind not in "biuf":
            raise PredictionError(f"expected a grey (H, W) or colour (H, W, 3|4) uint8 array, "
                                  f"got shape {image.shape} of {image.dtype}")
        return _levels(array)
    if not isinstance(image, Image.Image):
        raise PredictionError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    try:
        if image.getexif().get(ORIENTATION, 1) in range(2, 9):  # a phone photo stored sideways plus this tag
            image = ImageOps.exif_transpose(image)  # (without one it would only copy the picture)
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):
            return _levels(np.asarray(image))  # keep the full depth; _levels rescales it
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            return _flatten_transparency(image if image.mode == "RGBA" else image.convert("RGBA"))
        return np.asarray(image.convert("L"), dtype=np.float32)
    except (ValueError, OSError, SyntaxError, KeyError, TypeError) as e:  # odd modes, broken metadata
        raise PredictionError(f"cannot convert the {image.mode} image to grey ({e})") from None


def _levels(array: np.ndarray) -> np.ndarray:
    """Floats in 0..1 and integers in 0..255 are taken as they are; other ranges are rescaled."""
    x = array.astype(np.float32)
    if not np.isfinite(x).all():
        raise PredictionError("the image holds NaN or infinite values")
    if x.size == 0:
        raise PredictionError("the image is empty (0 pixels)")
    lo, hi = float(x.min()), float(x.max())
    if array.dtype.kind in "bf" and lo >= 0 and hi <= 1:
        return x * 255
    if lo >= 0 and hi <= 255:
        return x
    return (x - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(x)


def _flatten_transparency(rgba: Image.Image) -> np.ndarray:
    """Lay the image on paper: transparent pixels become the paper's grey level.

    A canvas export is ink alone on a transparent sheet (opaque pixels are the
    minority): its paper is the opposite shade to the ink. Otherwise (a photo with
    a few transparent pixels) the paper is the typical opaque grey.
    """
    alpha = np.asarray(rgba.getchannel("A"))  # 0 transparent .. 255 opaque
    grey = np.asarray(rgba.convert("L"), dtype=np.float32)  # ITU-R 601-2 luma of the colour, alpha ignored
    opaque = alpha > 127
    count = np.count_nonzero(opaque)
    if not count:
        raise PredictionError("no ink found (the image is fully transparent)")
    typical = _median(grey if count == grey.size else grey[opaque])  # a browser's canvas export: all opaque
    if 2 * count < grey.size:
        paper = 255.0 if typical < 128 else 0.0
    else:
        paper = typical
    # paper + (grey - paper) * alpha / 255, in place (float32 throughout)
    grey -= paper
    grey *= alpha
    grey *= 1 / 255
    grey += paper
    return grey


def _median(x: np.ndarray) -> float:
    """The median of all values of `x` (no NaN among them), as np.median gives it.

    One selection at the middle rank, then the largest value below it: np.median
    selects two middle ranks and the last one (looking for NaN) in one call, which
    numpy does many times slower than a single selection. numpy's selection is slow
    too when most values are equal, so the common case of more than half the values
    at one end (a canvas's flat paper: black once the ink is bright, white in a
    browser's canvas export before) is answered by counting.
    """
    flat = x.ravel()
    middle = flat.size // 2
    for end in (flat.min(), flat.max()):
        if np.count_nonzero(flat == end) > middle:  # both middle ranks are at this level
            return float(end)
    part = np.partition(flat, middle)
    if flat.size % 2:
        return float(part[middle])
    return (float(part[:middle].max()) + float(part[middle])) / 2


def _percentile(x: np.ndarray, q: int) -> float:
    """np.percentile(x, q) of a float32 array ("linear": the two order statistics around rank
    (n - 1) q / 100, interpolated in float32 as numpy 2.4 does for a Python q, bit for bit; numpy 2.2
    interpolates in float64, a few float32 steps away), found by one selection in `x` itself (its
    order changes) in a fraction of np.percentile's time, most of which is its generality."""
    rank = (x.size - 1) * (q / 100)
    if rank >= x.size - 1:
        return float(x.max())
    below = math.floor(rank)
    x.partition([below, below + 1])
    low, high = x[below], x[below + 1]
    weight = rank - below
    step = high - low
    return float(high - step * np.float32(1 - weight) if weight >= 0.5 else low + step * np.float32(weight))


def _shrunk_size(h: int, w: int, longer_side: int) -> tuple[int, int] | None:
    """(width, height) of a (h, w) picture shrunk so that its longer side is at most `longer_side`;
    None when it is that small already."""
    scale = longer_side / max(h, w)
    if scale >= 1:
        return None
    return max(1, round(w * scale)), max(1, round(h * scale))


def _shrink(grey: np.ndarray, longer_side: int = WORK_SIZE) -> np.ndarray:
    """Shrink by area averaging so that the longer side is at most `longer_side`."""
    size = _shrunk_size(*grey.shape, longer_side)
    if size is None:
        return grey
    return np.asarray(Image.fromarray(np.asarray(grey, dtype=np.float32)).resize(size, Image.Resampling.BOX))


def _shrunk_any(mask: np.ndarray, longer_side: int) -> np.ndarray:
    """`_shrink(mask, longer_side) > 0` for a boolean mask, exactly, in a third of its time: a pixel of
    the shrunk copy is above 0 when any pixel of its box (those Pillow gives a weight) is set."""
    size = _shrunk_size(*mask.shape, longer_side)
    if size is None:
        return mask
    (w, h), (new_w, new_h) = mask.shape[::-1], size
    out = _any_in_boxes(mask, *_box_bounds(h, new_h))
    return _any_in_boxes(np.ascontiguousarray(out.T), *_box_bounds(w, new_w)).T  # columns: rows of the transpose


def _any_in_boxes(mask: np.ndarray, first: np.ndarray, end: np.ndarray) -> np.ndarray:
    """For each box of rows [first[i], end[i]), whether any of its rows is set (whole rows copied at once)."""
    out = mask[first]
    for k in range(1, int((end - first).max())):
        out |= mask[np.minimum(first + k, end - 1)]  # a box shorter than k: its last row again
    return out


@functools.lru_cache(maxsize=64)
def _box_bounds(size: int, new_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first and one past the last of the `size` pixels that Pillow's BOX resampling to `new_size`
    weighs into each new pixel: read from Pillow itself (an identity matrix resampled along one axis),
    so that they are its own to the last rounding."""
    weights = np.asarray(Image.fromarray(np.eye(size, dtype=np.float32)).resize((new_size, size),
                                                                                 Image.Resampling.BOX)) > 0
    first = weights.argmax(axis=0)
    end = size - weights[::-1].argmax(axis=0)
    return first, end


# ---------------------------------------------------------------------------
# MNIST-style preparation

def ink_is_dark(grey: np.ndarray) -> bool:
    """True when the picture is dark ink on light paper (a photo, a canvas export).

    Paper covers most of a picture and ink little, so the paper's end of the grey
    range holds more pixels than the ink's. (The border's level is no guide: a
    shadow may cover it.)
    """
    lo, hi = float(grey.min()), float(grey.max())
    near = EXTREME * (hi - lo)
    return np.count_nonzero(grey >= hi - near) > np.count_nonzero(grey <= lo + near)


def paper_level(grey: np.ndarray) -> np.ndarray:
    """The paper under bright ink, following uneven light and shadows: a morphological opening.

    A minimum over a window wider than any stroke erases the ink; the maximum over
    the same window then restores the paper's own shape (gradients, the edge of a
    shadow) exactly. Strokes are taken to be thinner than PAPER_WINDOW of the
    picture's longer side. Computed on a copy of at most OPENING_SIZE pixels a side,
    for speed.
    """
    h, w = grey.shape
    small_w, small_h = _shrunk_size(h, w, OPENING_SIZE) or (w, h)
    size = max(3, 2 * round(PAPER_WINDOW * max(small_w, small_h) / 2) + 1)  # pixels, odd: centred windows
    if _paper_at_zero_everywhere(grey, size):  # a canvas export (the same answer as below, sooner)
        return np.zeros(grey.shape, dtype=np.float32)
    small = _shrink(grey, OPENING_SIZE)
    # Beyond the picture's edge the edge pixels repeat ("nearest"), so the paper at
    # the border is judged from the paper nearby, not from an invented level.
    eroded = ndimage.minimum_filter(small, size=size, mode="nearest")  # the ink erased
    lowest = eroded.min()
    if eroded.max() == lowest:  # flat paper (a canvas export): no shape to restore
        return np.full(grey.shape, lowest, dtype=np.float32)
    opened = ndimage.maximum_filter(eroded, size=size, mode="nearest")  # the paper's shape restored
    if opened.shape == grey.shape:
        return opened
    return np.asarray(Image.fromarray(opened.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))


def _paper_at_zero_everywhere(grey: np.ndarray, size: int) -> bool:
    """Whether `paper_level` is 0 everywhere: grey levels >= 0, and every size x size window of the
    shrunk copy (edges repeated) holds a pixel at 0, i.e. a pixel whose whole box is 0 in `grey`.

    The erosion is done on the boolean "inked" mask of the shrunk copy, found without shrinking the
    grey levels (`_shrunk_any`): a canvas's paper is exactly 0 once its ink is bright. (Levels below
    float32's smallest normal number could round to 0 when shrunk: those go the long way.)"""
    if grey.min() != 0:
        return False
    inked = grey >= np.finfo(np.float32).tiny
    if np.count_nonzero(inked) + np.count_nonzero(grey == 0) != grey.size:  # some tiny levels
        return False
    inked = _shrunk_any(inked, OPENING_SIZE)
    # Is a window wholly inked? The mask eroded by size x size, separably, along each axis within
    # the inked rows or columns (a window reaching beyond them holds paper), with windows doubled in
    # length at each step, on a copy whose edges repeat as far as a window reaches.
    half = size // 2
    for axis in (0, 1):
        lines = np.flatnonzero(inked.any(axis=1 - axis))
        if not lines.size:
            return True
        reach = np.clip(np.arange(lines[0] - half, lines[-1] + 1 + half), 0, inked.shape[axis] - 1)
        inked = inked.take(reach, axis=axis)
        length = 1
        while length < size:
            step = min(length, size - length)
            inked = inked[step:] & inked[:-step] if axis == 0 else inked[:, step:] & inked[:, :-step]
            length += step
    return not inked.any()


def remove_background(grey: np.ndarray) -> np.ndarray:
    """Bright ink on dark paper -> ink only: paper exactly 0, stroke cores 255."""
    if float(grey.max() - grey.min()) < MIN_CONTRAST:
        raise PredictionError("no ink found (the image is blank: one uniform level)")
    # A new float32 array, changed in place from here on: every temporary the
    # size of the picture costs time in fresh memory.
    ink = grey - paper_level(grey)
    # Ink covers less than half of the picture, so the median and the median
    # deviation describe the paper: what the opening left of it, and its grain.
    ink -= _median(ink)
    grain = 1.4826 * _median(np.abs(ink))  # a standard deviation for Gaussian noise
    # The ink level: a high percentile of the clearly inked pixels (MNIST's stroke
    # cores are saturated, so they are mapped to 255 here too).
    strong = ink[ink > 0.5 * ink.max()]
    level = _percentile(strong, 90) if strong.size else 0.0
    if level < max(MIN_CONTRAST, NOISE_SIGMAS * grain):
        raise PredictionError(f"no ink found (nothing stands out from the paper: contrast {level:.0f} "
                              f"grey levels of 255, paper grain {grain:.1f})")
    # Soft threshold: paper grain, noise and shadow edges go to 0 without a hard edge.
    floor = max(FAINT * level, NOISE_SIGMAS * grain)
    ink -= floor
    ink *= 255 / (level - floor)
    return np.clip(ink, 0, 255, out=ink)


def writing(ink: np.ndarray) -> np.ndarray:
    """The ink less what is not writing: specks of dust, and blobs touching the picture's edge
    (what is left of a shadow's corner, the sheet's edge) when the rest holds enough ink.

    Blobs are found on a copy at most BLOB_SIZE pixels a side, for speed.
    """
    coarse = _shrunk_any(ink >= 127.5, BLOB_SIZE)  # any half-inked pixel below
    # blob i is label i, 0 is paper; numbered in numpy's index type, as bincount and indexing want them
    labels, count = ndimage.label(coarse, structure=EIGHT_CONNECTED, output=np.intp)
    mass = np.bincount(labels.ravel(), minlength=count + 1)  # pixels per blob
    mass[0] = 0
    edge = np.zeros(count + 1, dtype=bool)
    edge[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    edge[0] = False
    if mass[~edge].sum() >= EDGE_SHARE * mass.sum():
        mass[edge] = 0
    kept = mass >= SPECK * mass.max()
    kept[0] = False
    keep = _dilate(kept[labels])  # a margin of one pixel for the strokes' soft edges
    if keep.shape != ink.shape:  # back to full size as Pillow's NEAREST resampling would
        keep = keep[_nearest(keep.shape[0], ink.shape[0], 0)][:, _nearest(keep.shape[1], ink.shape[1], 1)]
    return ink * keep


@functools.lru_cache(maxsize=64)
def _nearest(size: int, new_size: int, axis: int) -> np.ndarray:
    """Which of `size` rows (axis 0) or columns (1) Pillow's NEAREST resampling to `new_size` copies
    into each: read from Pillow itself, resampling the numbers of the lines."""
    lines = np.arange(size, dtype=np.int32).reshape((size, 1) if axis == 0 else (1, size))
    new = (1, new_size) if axis == 0 else (new_size, 1)  # (width, height)
    return np.asarray(Image.fromarray(lines).resize(new, Image.Resampling.NEAREST)).ravel().astype(np.intp)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """A boolean mask grown by one pixel in all 8 directions: ndimage.maximum_filter(mask, size=3)
    exactly (its reflected border adds nothing to a maximum), in a tenth of its time."""
    padded = np.pad(mask, 1)
    rows = padded[:-2] | padded[1:-1] | padded[2:]
    return rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]


def ink_box(ink: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns holding the at-least-half-inked pixels."""
    inked = ink >= 127.5
    rows, cols = np.flatnonzero(inked.any(axis=1)), np.flatnonzero(inked.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def stroke_width(ink: np.ndarray) -> float:
    """Mean stroke width in pixels: twice the inked area over its outline's length (at half ink)."""
    inked = ink > 127.5
    outline = (np.count_nonzero(inked[1:] != inked[:-1]) + np.count_nonzero(inked[:, 1:] != inked[:, :-1])
               + np.count_nonzero(inked[[0, -1]]) + np.count_nonzero(inked[:, [0, -1]]))  # ink at the edge too
    return 2 * float(np.count_nonzero(inked)) / max(outline, 1)


def fit_box(ink: np.ndarray) -> np.ndarray:
    """The cropped ink fitted into BOX x BOX, aspect ratio kept, with strokes at least MNIST's thinnest.

    NIST's writers all used similar pens at a similar scale, so MNIST strokes are
    about a tenth of the digit's height; a ballpoint photographed from afar is far
    thinner and would fade to grey at 20x20. Such strokes are thickened first (a
    maximum filter adds its width less one pixel). Bold strokes are left alone:
    MNIST has bold digits too. Lanczos resampling antialiases like MNIST's grey edges.
    """
    h, w = ink.shape
    scale = BOX / max(h, w)  # final pixels per pixel of `ink`
    steps = round((MIN_STROKE / scale - stroke_width(ink)) / 2)
    if steps > 0:
        ink = ndimage.maximum_filter(ink, size=2 * steps + 1, mode="nearest")
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = Image.fromarray(ink.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized), 0, 255)


def centre_by_mass(box: np.ndarray) -> np.ndarray:
    """Paste into SIZE x SIZE so that the centre of mass lands on (CENTRE, CENTRE).

    That is where it lies in MNIST (mean (14.0, 14.0) in pixel indices over the
    test set). The shift is rounded to whole pixels, and limited so no ink is cut.
    """
    h, w = box.shape
    mass = box.sum()
    if not mass > 0:
        raise PredictionError("no ink found (the ink vanished when fitted into 20x20)")
    # In pixel indices of `box`: ndimage.center_of_mass's own sums, without its generality.
    cy = (box * np.arange(h, dtype=np.float64)[:, None]).sum() / mass
    cx = (box * np.arange(w, dtype=np.float64)[None, :]).sum() / mass
    top = min(max(round(CENTRE - cy), 0), SIZE - h)
    left = min(max(round(CENTRE - cx), 0), SIZE - w)
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    canvas[top:top + h, left:left + w] = box
    return canvas


@dataclass
class Preparation:
    """Every step of `prepare_steps` for one picture, as the pipeline computed it (float32, 0..255)."""

    grey: np.ndarray  # the picture in grey levels, at most WORK_SIZE pixels a side, as drawn
    inverted: bool  # whether the grey levels were turned over to make the ink bright
    ink: np.ndarray  # bright ink on black (paper 0, stroke cores 255), dust and shadow residue dropped
    crop: tuple[slice, slice]  # rows and columns of `ink` holding the ink
    fitted: np.ndarray  # the cropped ink fitted into BOX x BOX (one side BOX, aspect ratio kept)
    image: np.ndarray  # uint8 (SIZE, SIZE): `fitted` centred by mass, what the network sees

    @property
    def cropped(self) -> np.ndarray:
        return self.ink[self.crop]


def prepare_steps(image: Any, invert: bool | None = None) -> Preparation:
    """`prepare_image`, keeping what each step made (the page shows them); same arguments and errors."""
    grey = _shrink(_grey(image))  # grey levels 0..255, at most WORK_SIZE pixels a side
    inverted = invert if invert is not None else ink_is_dark(grey)
    ink = writing(remove_background(255 - grey if inverted else grey))  # MNIST's ink is bright
    crop = ink_box(ink)
    fitted = fit_box(ink[crop])  # into 20x20, aspect ratio kept, thin strokes thickened
    return Preparation(grey, inverted, ink, crop, fitted, np.round(centre_by_mass(fitted)).astype(np.uint8))


def prepare_image(image: Any, invert: bool | None = None) -> np.ndarray:
    """Any picture of one character -> MNIST-style uint8 (28, 28): bright ink on black, centred.

    `image`: a PIL image of any mode or a numpy array (H, W) grey or (H, W, 3|4) uint8.
    `invert`: None detects whether the ink is dark; True/False forces it.
    Raises PredictionError when there is no ink. Its steps: `prepare_steps`.
    """
    return prepare_steps(image, invert).image
