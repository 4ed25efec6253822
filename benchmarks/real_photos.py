"""How well does a model read digits as people make them? A benchmark, not a test.

Writes realistic pictures of digits to a folder, classifies them with
`mnistlab.commands.prediction.predict_files` (the same path as `mnistlab predict`) and
prints the accuracy per kind of picture beside the MNIST test accuracy.

Kinds of picture (dark ink on light paper unless said otherwise):
  mnist-photo    real MNIST test digits, inverted, enlarged 8-14x, slightly rotated,
                 placed anywhere on a large sheet with uneven light, paper grain,
                 sensor noise and blur, saved as JPEG (a quarter stored sideways with
                 an EXIF rotation tag, as phones do): the most honest proxy, since the
                 handwriting is real and only the picture-taking is simulated
  mnist-shadow   as mnist-photo (the same digits) with a soft-edged shadow across the sheet
  mnist-canvas   real MNIST test digits as black ink on a transparent sheet (RGBA PNG)
  drawn-canvas   digits drawn with jittered, slanted pen strokes (hand-made stroke
                 templates) as black ink on a transparent sheet (RGBA PNG)
  drawn-paper    such drawn digits in dark (black or blue) ink on off-white paper
                 with a light gradient (RGB PNG)
  drawn-photo    drawn-paper photographed: uneven light, blur, sensor noise, JPEG, EXIF tags
  drawn-thin     as drawn-photo with a thin ballpoint stroke (2.5-4% of the digit's
                 height, MNIST's strokes are about 10%)

Usage:
  python benchmarks/real_photos.py RUN_DIR [--data-dir DIR] [--out DIR] [--per-class N] [--seed S]
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mnistlab.core.checkpoint import load_checkpoint
from mnistlab.base.data import load, to_device
from mnistlab.core.evaluation import predictions
from mnistlab.commands.prediction import predict_array, predict_files
from mnistlab.base.prepare import prepare_image

# Pen paths per digit in a unit box (x right, y down); several ways of writing some digits.
_ELLIPSE = [(0.5 + 0.45 * np.sin(t), 0.5 - 0.5 * np.cos(t)) for t in np.linspace(0, 2 * np.pi, 17)]
TEMPLATES: dict[int, list[list[list[tuple[float, float]]]]] = {
    0: [[_ELLIPSE]],
    1: [[[(0.5, 0.0), (0.5, 1.0)]],
        [[(0.25, 0.2), (0.55, 0.0), (0.55, 1.0)]],
        [[(0.25, 0.2), (0.55, 0.0), (0.55, 1.0)], [(0.25, 1.0), (0.85, 1.0)]]],
    2: [[[(0.1, 0.25), (0.3, 0.02), (0.7, 0.02), (0.9, 0.25), (0.8, 0.5), (0.1, 1.0), (0.95, 1.0)]]],
    3: [[[(0.1, 0.1), (0.5, 0.0), (0.85, 0.15), (0.8, 0.4), (0.4, 0.5), (0.85, 0.6), (0.9, 0.85),
          (0.5, 1.0), (0.1, 0.9)]]],
    4: [[[(0.7, 1.0), (0.7, 0.0), (0.05, 0.7), (1.0, 0.7)]],
        [[(0.15, 0.0), (0.05, 0.6), (0.95, 0.6)], [(0.7, 0.2), (0.7, 1.0)]]],
    5: [[[(0.85, 0.0), (0.2, 0.0), (0.15, 0.45), (0.6, 0.38), (0.9, 0.6), (0.85, 0.9), (0.5, 1.0),
          (0.1, 0.9)]]],
    6: [[[(0.75, 0.0), (0.3, 0.3), (0.1, 0.7), (0.3, 1.0), (0.7, 0.95), (0.85, 0.7), (0.6, 0.5),
          (0.2, 0.6)]]],
    7: [[[(0.0, 0.0), (1.0, 0.0), (0.35, 1.0)]],
        [[(0.0, 0.0), (1.0, 0.0), (0.35, 1.0)], [(0.3, 0.5), (0.85, 0.5)]]],
    8: [[[(0.5, 0.5), (0.15, 0.25), (0.5, 0.0), (0.85, 0.25), (0.5, 0.5), (0.1, 0.75), (0.5, 1.0),
          (0.9, 0.75), (0.5, 0.5)]]],
    9: [[[(0.85, 0.3), (0.5, 0.5), (0.15, 0.3), (0.5, 0.0), (0.85, 0.25), (0.85, 0.6), (0.75, 1.0)]],
        [[(0.85, 0.3), (0.5, 0.5), (0.15, 0.3), (0.5, 0.0), (0.85, 0.25), (0.85, 1.0)]]],
}


def chaikin(points: np.ndarray, rounds: int = 2, per_segment: int = 3) -> np.ndarray:
    """Round the corners of a polyline (Chaikin's corner cutting), as a moving pen does.

    Segments are first split in `per_segment` pieces, so corners round only locally.
    """
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    points = np.concatenate([*(a + t * (b - a) for a, b in zip(points[:-1], points[1:])), points[-1:]])
    for _ in range(rounds):
        a, b = points[:-1], points[1:]
        cut = np.empty((2 * len(a), 2))
        cut[0::2], cut[1::2] = 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b
        points = np.concatenate([points[:1], cut, points[-1:]])
    return points


def handwritten_strokes(digit: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One person's way of writing `digit`: a template, jittered, slanted, squeezed; unit height."""
    strokes = TEMPLATES[digit][rng.integers(len(TEMPLATES[digit]))]
    slant, width = rng.uniform(-0.35, 0.2), rng.uniform(0.5, 0.8)
    out = []
    for stroke in strokes:
        p = np.array(stroke, dtype=float) + rng.normal(0, 0.035, (len(stroke), 2))
        p[:, 0] = (p[:, 0] - 0.5) * width + slant * (0.5 - p[:, 1])  # x centred, sheared by height
        out.append(chaikin(p))
    return out


def paper(size: tuple[int, int], rng: np.random.Generator, level: float) -> np.ndarray:
    """Paper grey levels (H, W): a base level, a light gradient and a vignette."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0, 50)
    gradient = strength * (np.cos(angle) * (xx - xx.mean()) + np.sin(angle) * (yy - yy.mean()))
    vignette = rng.uniform(0, 40) * ((xx - xx.mean()) ** 2 + (yy - yy.mean()) ** 2)
    return level + gradient - vignette


def place(box_hw: tuple[int, int], size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """A random top-left corner that keeps a box of (h, w) inside a picture of size (w, h)."""
    return int(rng.integers(0, size[1] - box_hw[0] + 1)), int(rng.integers(0, size[0] - box_hw[1] + 1))


def draw_mask(digit: int, size: tuple[int, int], rng: np.random.Generator, thin: bool) -> np.ndarray:
    """Ink coverage in 0..1 (H, W) of a handwritten digit drawn somewhere on the picture."""
    w, h = size
    unit = handwritten_strokes(digit, rng)
    pen_share = rng.uniform(0.025, 0.04) if thin else rng.uniform(0.07, 0.14)  # pen width / digit height
    lo = np.min([s.min(axis=0) for s in unit], axis=0) - pen_share
    hi = np.max([s.max(axis=0) for s in unit], axis=0) + pen_share
    # Digit height: 30-80% of the picture's, less when the digit would not fit.
    height = min(rng.uniform(0.3, 0.8) * h / (hi[1] - lo[1]), 0.95 * w / (hi[0] - lo[0]))
    pen = pen_share * height
    strokes = [(s - lo) * height for s in unit]
    top, left = place((int((hi[1] - lo[1]) * height) + 1, int((hi[0] - lo[0]) * height) + 1), size, rng)
    scale = 2  # draw at twice the size, then shrink: antialiased edges like a real pen
    mask = Image.new("L", (w * scale, h * scale), 0)
    pen_draw = ImageDraw.Draw(mask)
    for s in strokes:
        pts = [((x + left) * scale, (y + top) * scale) for x, y in s]
        pen_draw.line(pts, fill=255, width=max(1, round(pen * scale)), joint="curve")
        r = pen * scale / 2
        for x, y in (pts[0], pts[-1]):
            pen_draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(mask.resize(size, Image.Resampling.BOX), dtype=np.float32) / 255


def mnist_mask(digit_image: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A real MNIST digit enlarged 8-14x, slightly rotated, placed anywhere: coverage 0..1 (H, W)."""
    zoom = rng.uniform(8, 14)
    side = min(int(28 * zoom), min(size) - 2)
    big = Image.fromarray(digit_image).resize((side, side), Image.Resampling.BICUBIC)
    big = big.rotate(rng.uniform(-6, 6), resample=Image.Resampling.BICUBIC)
    mask = np.zeros((size[1], size[0]), dtype=np.float32)
    top, left = place((side, side), size, rng)
    mask[top:top + side, left:left + side] = np.asarray(big, dtype=np.float32) / 255
    return mask


def shadow(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A soft-edged shadow (of the phone, of a hand) over part of the sheet: light factor (H, W)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.uniform(0, w / max(h, w)), rng.uniform(0, h / max(h, w))  # a point on the shadow's edge
    side = np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)
    return 1 - rng.uniform(0.25, 0.5) / (1 + np.exp(-side / rng.uniform(0.01, 0.08)))


def on_paper(mask: np.ndarray, rng: np.random.Generator, photo: bool, shade: bool = False) -> Image.Image:
    """Ink (black or blue) on off-white paper filling the picture; as a photo: noise and blur."""
    h, w = mask.shape
    sheet = paper((w, h), rng, rng.uniform(195, 245))
    light = shadow((w, h), rng)[..., None] if shade else 1.0  # dims the ink and the paper alike
    tint = np.array([1.0, rng.uniform(0.97, 1.0), rng.uniform(0.88, 1.0)])  # white to cream
    ink = np.array([20, 20, 25]) if rng.random() < 0.6 else np.array([25, 40, 130])  # black or blue
    ink = ink + rng.uniform(0, 50)
    rgb = (sheet[..., None] * tint * (1 - mask[..., None]) + ink * mask[..., None]) * light
    if photo:
        rgb += rng.normal(0, rng.uniform(2, 10), rgb.shape)  # sensor noise
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if photo:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))  # focus, camera shake
    return image


def on_transparent(mask: np.ndarray) -> Image.Image:
    """Black ink on a transparent sheet, as a drawing canvas exports it."""
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[..., 3] = np.round(mask * 255).astype(np.uint8)
    return Image.fromarray(rgba)


def save_photo(image: Image.Image, path: Path, rng: np.random.Generator) -> Path:
    """JPEG at a phone-like quality; a quarter stored sideways with an EXIF orientation tag."""
    exif = Image.Exif()
    if rng.random() < 0.25:
        # Orientation 6: the viewer rotates 90 degrees clockwise, so store it rotated back.
        image = image.transpose(Image.Transpose.ROTATE_90)
        exif[0x0112] = 6
    path = path.with_suffix(".jpg")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(40, 91)), exif=exif)
    path.write_bytes(buffer.getvalue())
    return path


def random_size(rng: np.random.Generator, smallest: tuple[int, int], largest: tuple[int, int]) -> tuple[int, int]:
    w, h = int(rng.integers(smallest[0], largest[0] + 1)), int(rng.integers(smallest[1], largest[1] + 1))
    return (h, w) if rng.random() < 0.3 else (w, h)  # some portrait pictures


def write_pictures(out: Path, test_images: np.ndarray, test_labels: np.ndarray, per_class: int,
                   seed: int) -> dict[str, list[tuple[Path, int]]]:
    """Write every kind of picture; returns kind -> [(file, true digit)]."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(test_labels == d) for d in range(10)]
    kinds: dict[str, list[tuple[Path, int]]] = {}

    def add(kind: str, digit: int, i: int, image: Image.Image, photo: bool) -> None:
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{digit}_{i:03d}.png"
        if photo:
            path = save_photo(image, path, rng)
        else:
            image.save(path)
        kinds.setdefault(kind, []).append((path, digit))

    for digit in range(10):
        picks = rng.choice(by_class[digit], size=2 * per_class, replace=False)
        for i in range(per_class):
            size = random_size(rng, (800, 600), (1600, 1200))
            add("mnist-photo", digit, i, on_paper(mnist_mask(test_images[picks[i]], size, rng), rng, True), True)
            add("mnist-shadow", digit, i,
                on_paper(mnist_mask(test_images[picks[i]], size, rng), rng, True, shade=True), True)
            size = random_size(rng, (280, 280), (800, 600))
            add("mnist-canvas", digit, i, on_transparent(mnist_mask(test_images[picks[per_class + i]], size, rng)),
                False)
            size = random_size(rng, (400, 300), (1200, 900))
            add("drawn-canvas", digit, i, on_transparent(draw_mask(digit, size, rng, thin=False)), False)
            add("drawn-paper", digit, i, on_paper(draw_mask(digit, size, rng, thin=False), rng, False), False)
            add("drawn-photo", digit, i, on_paper(draw_mask(digit, size, rng, thin=False), rng, True), True)
            add("drawn-thin", digit, i, on_paper(draw_mask(digit, size, rng, thin=True), rng, True), True)
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="run directory or checkpoint (trained on MNIST)")
    parser.add_argument("--data-dir", type=Path, help="folder with the MNIST IDX files")
    parser.add_argument("--out", type=Path, default=Path("real_photos"), help="where the pictures go")
    parser.add_argument("--per-class", type=int, default=30, help="pictures per digit and kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.model)
    test = load("mnist", args.data_dir).test
    images, labels = test.images.numpy(), test.labels.numpy()

    x, y = to_device(test, "cpu", checkpoint.mean, checkpoint.std)
    mnist_accuracy = float((predictions(checkpoint.model, x) == y).float().mean())
    print(f"{'MNIST test set (28x28 as given)':<34} {100 * mnist_accuracy:6.2f}%  ({len(y)} images)")
    sample = np.random.default_rng(args.seed).choice(len(labels), 2000, replace=False)
    again = [int(predict_array(checkpoint, prepare_image(images[i])).argmax()) == labels[i] for i in sample]
    print(f"{'MNIST test, through prepare_image':<34} {100 * np.mean(again):6.2f}%  ({len(sample)} images)")

    kinds = write_pictures(args.out, images, labels, args.per_class, args.seed)
    for kind, items in kinds.items():
        start = time.perf_counter()
        results = predict_files(checkpoint, [p for p, _ in items])
        seconds = time.perf_counter() - start
        correct = sum(r.get("prediction") == digit for r, (_, digit) in zip(results, items))
        errors = [r for r in results if "error" in r]
        print(f"{kind:<34} {100 * correct / len(items):6.2f}%  ({len(items)} pictures in {args.out / kind}, "
              f"{1000 * seconds / len(items):.0f} ms each" + (f", {len(errors)} not read" if errors else "") + ")")
        for r in errors[:3]:
            print(f"    {r['file']}: {r['error']}")


if __name__ == "__main__":
    main()
