"""How long does MNIST-style preparation take per picture? A benchmark, not a test.

Makes pictures in memory, encoded as a browser or a phone would send them, and
times `load_image` + `prepare_image` on the encoded bytes (decoding included),
one picture at a time, in this process. Prints the median and 90th percentile
per kind of picture.

Kinds of picture:
  canvas-png   280x280 PNG of a digit drawn as thick antialiased strokes, as a
               browser canvas exports it: half black ink on a transparent sheet
               (RGBA), half dark ink on white (RGB)
  photo-jpeg   4000x3000 JPEG (12 megapixels, a third of them portrait) of a digit
               in dark ink on paper with uneven light, a vignette, sensor noise
               and a slight blur; a quarter stored sideways with an EXIF rotation
               tag, as phones do

Only numpy, Pillow and `mnistlab.base.prepare` are used, so the script also runs
against an older checkout for a before/after comparison:
  PYTHONPATH=src python benchmarks/prepare_speed.py
  PYTHONPATH=/tmp/prep-before/src python benchmarks/prepare_speed.py
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mnistlab.commands.bench import cpu_model
from mnistlab.base.errors import PredictionError
from mnistlab.base.prepare import load_image, prepare_image


def stroke_mask(size: tuple[int, int], rng: np.random.Generator, height: float, pen: float) -> Image.Image:
    """Ink coverage (mode L, 0..255) of a digit-like stroke: a random pen path `height` pixels
    high with a round pen `pen` pixels wide, drawn at twice the size then shrunk (antialiased)."""
    w, h = size
    scale = 2
    n = int(rng.integers(3, 7))
    unit = np.column_stack([rng.uniform(0, 0.6, n), np.linspace(0, 1, n) + rng.normal(0, 0.08, n)])
    unit[:, 0] += rng.normal(0, 0.05, n)
    top = rng.uniform(pen, h - height - pen)
    left = rng.uniform(pen, w - 0.6 * height - pen)
    points = [((left + x * height) * scale, (top + y * height) * scale) for x, y in unit]
    mask = Image.new("L", (w * scale, h * scale), 0)
    draw = ImageDraw.Draw(mask)
    width = max(1, round(pen * scale))
    draw.line(points, fill=255, width=width, joint="curve")
    for x, y in (points[0], points[-1]):  # round pen ends
        r = width / 2
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return mask.resize(size, Image.Resampling.BOX)


def canvas_png(rng: np.random.Generator, transparent: bool) -> bytes:
    """A 280x280 canvas export: thick strokes, on a transparent sheet or on white."""
    size = (280, 280)
    mask = np.asarray(stroke_mask(size, rng, rng.uniform(140, 220), rng.uniform(12, 24)), dtype=np.float32) / 255
    ink = rng.uniform(0, 60, 3)  # black to dark blue-ish
    if transparent:
        rgba = np.zeros((*mask.shape, 4), np.uint8)
        rgba[..., :3] = ink.astype(np.uint8)
        rgba[..., 3] = np.round(mask * 255).astype(np.uint8)
        image = Image.fromarray(rgba)
    else:
        rgb = 255 * (1 - mask[..., None]) + ink * mask[..., None]
        image = Image.fromarray(np.round(rgb).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def photo_jpeg(rng: np.random.Generator, size: tuple[int, int] = (4000, 3000)) -> bytes:
    """A phone photo of a digit on paper: uneven light, vignette, noise, blur, JPEG, maybe EXIF-rotated."""
    w, h = size if rng.random() < 2 / 3 else size[::-1]
    # Light: a gradient and a vignette, smooth, so computed small and enlarged.
    yy, xx = np.mgrid[0:h // 16, 0:w // 16] / (max(h, w) / 16)
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(10, 60)
    light = (rng.uniform(180, 235) + strength * (np.cos(angle) * (xx - xx.mean()) + np.sin(angle) * (yy - yy.mean()))
             - rng.uniform(0, 50) * ((xx - xx.mean()) ** 2 + (yy - yy.mean()) ** 2))
    paper = np.asarray(Image.fromarray(light.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    mask = np.asarray(stroke_mask((w, h), rng, rng.uniform(0.3, 0.7) * min(w, h), rng.uniform(0.012, 0.03) * min(w, h)),
                      dtype=np.float32) / 255
    ink = rng.uniform(20, 70)
    noise = rng.standard_normal((h, w), dtype=np.float32) * rng.uniform(2, 8)
    grey = Image.fromarray(np.clip(paper * (1 - mask) + ink * mask + noise, 0, 255).astype(np.uint8))
    grey = np.asarray(grey.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.0))), dtype=np.float32)
    tint = np.array([1.0, rng.uniform(0.96, 1.0), rng.uniform(0.88, 1.0)], np.float32)  # white to cream
    image = Image.fromarray((grey[..., None] * tint).astype(np.uint8))
    exif = Image.Exif()
    if rng.random() < 0.25:
        image = image.transpose(Image.Transpose.ROTATE_90)  # stored sideways; orientation 6 turns it back
        exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(80, 96)), exif=exif)
    return buffer.getvalue()


def time_one(data: bytes) -> tuple[float, float]:
    """Seconds to decode and prepare one encoded picture: wall clock, and CPU time of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    prepare_image(load_image(io.BytesIO(data), name="benchmark"))
    return time.perf_counter() - wall, time.process_time() - cpu


def summarise(kind: str, timings: list[tuple[float, float]], failed: int) -> str:
    wall, cpu = (np.array(column) * 1000 for column in zip(*timings))
    return (f"{kind:<12} {len(wall):5d} {statistics.median(wall):9.2f} {np.percentile(wall, 90):9.2f} "
            f"{wall.min():9.2f} {wall.max():9.2f} {statistics.median(cpu):9.2f}"
            + (f"   ({failed} refused: no ink)" if failed else ""))


def load_average() -> str:
    """The 1-minute load average, or 'unknown' where the system does not tell."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--canvases", type=int, default=300, help="canvas PNGs to time (default 300)")
    parser.add_argument("--photos", type=int, default=24, help="12-megapixel JPEG photos to time (default 24)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="times each picture is prepared, interleaved across pictures (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import mnistlab.base.prepare

    rng = np.random.default_rng(args.seed)
    pictures = {
        "canvas-png": [canvas_png(rng, transparent=i % 2 == 0) for i in range(args.canvases)],
        "photo-jpeg": [photo_jpeg(rng) for _ in range(args.photos)],
    }
    print(f"code: {os.path.dirname(mnistlab.base.prepare.__file__)}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"numpy {np.__version__}, Pillow {Image.__version__}")
    print(f"load average before: {load_average()} (other processes slow every timing down)")
    print("milliseconds per picture, wall clock (the target) and the median CPU time of this process")
    print(f"{'kind':<12} {'n':>5} {'median':>9} {'p90':>9} {'min':>9} {'max':>9} {'cpu':>9}")
    for kind, encoded in pictures.items():
        try:
            time_one(encoded[0])  # warm-up: imports, first-call caches
        except PredictionError:
            pass
        timings, failed = [], 0
        for _ in range(args.repeats):
            for data in encoded:
                try:
                    timings.append(time_one(data))
                except PredictionError:
                    failed += 1
        print(summarise(kind, timings, failed), flush=True)
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
