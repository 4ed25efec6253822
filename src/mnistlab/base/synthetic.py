"""A built-in MNIST-like dataset: the digits 0-9 rendered from matplotlib's fonts.

It needs no files and no network, so every command can run anywhere (a first
try offline, demos, tests). Two stages keep it fast:

1. A small bank of base glyphs is rendered once with PIL: every digit in every
   font at several stroke widths, laid out the MNIST way (fitted in a 20x20 box,
   aspect kept, centre of mass at the image centre) at twice the final
   resolution (56x56) so that the later resampling is anti-aliased.
2. Every sample is one bank glyph under a random affine map (rotation, scale,
   aspect, shear, shift) plus a smooth random warp (a little handwriting
   wobble), applied to whole batches at once: the sampling grids of a batch are
   one matrix product, and `grid_sample` samples the 56x56 glyphs straight
   onto the 28x28 grid.

All randomness comes from `torch.Generator`s seeded from `seed`; the train and
test splits use independent streams, so the test set is not a copy of training
images and does not change with `n_train`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from PIL.ImageFont import FreeTypeFont

from .prepare import BOX, CENTRE, SIZE

VERSION = 2  # bump whenever generate()'s output changes: cached copies are keyed by it
OVERSAMPLE = 2  # the glyph bank is rendered at OVERSAMPLE x SIZE pixels
RENDER_PX = 128  # font size (pixels per em) used to draw each glyph before shrinking

# Fonts that matplotlib ships in mpl-data/fonts/ttf and that hold lining digits 0-9.
# Regular and italic faces only: pen strokes are even, and thickening a bold face
# fills its loops (a bold 8 becomes a blob).
FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf", "STIXGeneralItalic.ttf",
    "cmr10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
)
# Outline thickening added to each glyph, as a fraction of the font size: pen strokes
# in MNIST are about 2-3 px wide on a 20 px digit, thicker than these typefaces.
STROKES = (0.01, 0.025, 0.04)

# Random distortion of each sample (angles in degrees, shifts in output pixels).
ROTATION = 15.0  # uniform in +-ROTATION
SHEAR = 0.3  # horizontal shear factor, uniform in +-SHEAR
SCALE = (0.8, 1.05)  # overall size relative to the 20x20 box
ASPECT = (0.75, 1.15)  # extra horizontal scale (handwriting is often narrower)
SHIFT = 1.5  # uniform in +-SHIFT pixels in x and y
WARP_GRID = 4  # control points per side of the smooth random warp
WARP_PX = 1.0  # standard deviation of each control point's displacement, in pixels
GAIN = (1.0, 1.4)  # ink gain before clipping: MNIST strokes saturate at their core

BATCH = 8192  # samples distorted per grid_sample call; bounds memory (~100 MB), not results


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _glyph(font: FreeTypeFont, digit: str, stroke: int) -> np.ndarray:
    """One digit, cropped to its ink, as float32 in [0, 1]."""
    left, top, right, bottom = font.getbbox(digit, stroke_width=stroke)
    image = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(image).text((-left, -top), digit, font=font, fill=255,
                               stroke_width=stroke, stroke_fill=255)
    box = image.getbbox()
    return np.asarray(image.crop(box), dtype=np.float32) / 255


def _mnist_layout(glyph: np.ndarray, size: int, box: int) -> np.ndarray:
    """Shrink `glyph` so its longer side is `box` px (aspect kept), then place it in a
    `size` x `size` image with its centre of mass at the centre, as MNIST did."""
    h, w = glyph.shape
    scale = box / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    # Resizing in float mode ("F") keeps the anti-aliased edges exact.
    small = np.asarray(Image.fromarray(glyph, mode="F").resize((new_w, new_h), Image.Resampling.BOX))
    small = np.clip(small, 0, 1)
    rows, cols = np.indices(small.shape)
    mass = small.sum()
    centre = (CENTRE + 0.5) * size / SIZE - 0.5  # MNIST's centre, in the pixel indices of this size
    top = round(centre - (rows * small).sum() / mass)
    left = round(centre - (cols * small).sum() / mass)
    top, left = min(max(top, 0), size - new_h), min(max(left, 0), size - new_w)
    out = np.zeros((size, size), dtype=np.float32)
    out[top:top + new_h, left:left + new_w] = small
    return out


def glyph_bank() -> torch.Tensor:
    """Every digit x font x stroke, laid out MNIST-style: (10, fonts, strokes, 56, 56) float32."""
    folder = font_dir()
    paths = [folder / name for name in FONTS if (folder / name).is_file()]
    if not paths:
        raise FileNotFoundError(f"none of matplotlib's fonts were found in {folder}")
    size, box = SIZE * OVERSAMPLE, BOX * OVERSAMPLE
    bank = np.zeros((10, len(paths), len(STROKES), size, size), dtype=np.float32)
    for f, path in enumerate(paths):
        font = ImageFont.truetype(str(path), RENDER_PX)
        for s, stroke in enumerate(STROKES):
            for d in range(10):
                bank[d, f, s] = _mnist_layout(_glyph(font, str(d), round(stroke * RENDER_PX)), size, box)
    return torch.from_numpy(bank)


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _grid_basis() -> torch.Tensor:
    """(3 + WARP_GRID**2, 28*28): the fields that every sampling grid is a mix of.

    Rows x, y and 1 make the affine part (what F.affine_grid computes, pixel centres
    in [-1, 1]); then one smooth bump per warp control point, the bicubic
    interpolation weights of F.interpolate(mode="bicubic", align_corners=True).
    A batch of grids is then one matrix product, much faster than affine_grid
    plus interpolate on the CPU."""
    centres = (torch.arange(SIZE) + 0.5) * (2 / SIZE) - 1
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    k = WARP_GRID
    unit = torch.eye(k).view(k, 1, k, 1)
    spline = F.interpolate(unit, size=(SIZE, 1), mode="bicubic", align_corners=True).view(k, SIZE)
    bumps = spline.view(k, 1, SIZE, 1) * spline.view(1, k, 1, SIZE)
    return torch.cat([x.reshape(1, -1), y.reshape(1, -1), torch.ones(1, SIZE * SIZE),
                      bumps.reshape(k * k, -1)])


def _sampling_grids(n: int, basis: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Where each output pixel samples its glyph: (n, 28, 28, 2) in grid_sample's [-1, 1] units."""
    pixel = 2 / SIZE  # one output pixel in normalised units
    angle = torch.deg2rad(_uniform(n, -ROTATION, ROTATION, gen))
    shear = _uniform(n, -SHEAR, SHEAR, gen)
    scale = _uniform(n, *SCALE, gen)
    aspect = _uniform(n, *ASPECT, gen)
    shift = _uniform(2 * n, -SHIFT, SHIFT, gen).view(n, 2, 1) * pixel
    # Forward map glyph -> image: rotate @ shear @ stretch, then shift; the grid needs its inverse.
    cos, sin, zero, one = angle.cos(), angle.sin(), torch.zeros(n), torch.ones(n)
    rotate = torch.stack([cos, -sin, sin, cos], 1).view(n, 2, 2)
    shear_m = torch.stack([one, shear, zero, one], 1).view(n, 2, 2)
    stretch = torch.stack([scale * aspect, zero, zero, scale], 1).view(n, 2, 2)
    inverse = torch.linalg.inv(rotate @ shear_m @ stretch)
    # The smooth warp: a random displacement of each control point.
    warp = torch.randn(n, 2, WARP_GRID ** 2, generator=gen) * (WARP_PX * pixel)
    weights = torch.cat([inverse, -(inverse @ shift), warp], dim=2)  # (n, 2, len(basis))
    grid = weights.view(2 * n, -1) @ basis  # (2n, 28*28): one matrix product for the batch
    return grid.view(n, 2, SIZE, SIZE).permute(0, 2, 3, 1)


def _render(bank: torch.Tensor, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n distorted digits from the bank, with balanced labels in random order."""
    gen = torch.Generator().manual_seed(seed)
    digits, fonts, strokes = bank.shape[:3]
    flat = bank.view(-1, 1, *bank.shape[3:])
    labels = torch.randperm(n, generator=gen) % digits  # each digit n/10 times, shuffled
    font = torch.randint(fonts, (n,), generator=gen)
    stroke = torch.randint(strokes, (n,), generator=gen)
    index = (labels * fonts + font) * strokes + stroke
    basis = _grid_basis()
    images = torch.empty(n, SIZE, SIZE, dtype=torch.uint8)
    for start in range(0, n, BATCH):
        end = min(start + BATCH, n)
        grid = _sampling_grids(end - start, basis, gen)
        ink = F.grid_sample(flat[index[start:end]], grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False).squeeze(1)
        gain = _uniform(end - start, *GAIN, gen).view(-1, 1, 1)
        images[start:end] = (ink * gain).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return images.numpy(), labels.to(torch.uint8).numpy()


def generate(n_train: int = 60_000, n_test: int = 10_000, seed: int = 0) -> dict[str, np.ndarray]:
    """The synthetic dataset as uint8 arrays: {train,test}_images (N, 28, 28), {train,test}_labels (N,).

    Light strokes on a black background, like MNIST. The same seed gives the same arrays.
    """
    bank = glyph_bank()
    # Independent, reproducible streams for the two splits.
    train_seed, test_seed = (int(child.generate_state(1, np.uint64)[0])
                             for child in np.random.SeedSequence(seed).spawn(2))
    train_images, train_labels = _render(bank, n_train, train_seed)
    test_images, test_labels = _render(bank, n_test, test_seed)
    return {"train_images": train_images, "train_labels": train_labels,
            "test_images": test_images, "test_labels": test_labels}
