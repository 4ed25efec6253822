"""What the lab's explanations cost and how exact they are. A benchmark, not a test.

For each run given:
  1. integrated gradients on the first --images test images, each for its predicted class, at
     8 to 128 steps: how far the shares' sum is from the change of log-probability they should add
     up to (|sum - change| / |change|, median and 95th percentile), and the time per image;
  2. the server's CPU per 280x280 canvas (`serve.classify`, in this process, one torch thread):
     the answer with the hidden layers (what the page asks while a stroke is drawn) against the
     answer with the preparation, saliency map and first layer (what it asks when the stroke ends);
  3. the Explore view's first pass over the test set (`evaluation.answers`), in seconds.

  PYTHONPATH=src python benchmarks/lab_explain.py runs/fast runs/cnn --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from mnistlab.commands.bench import cpu_model
from mnistlab.commands.lab import Extras
from mnistlab.commands.serve import Picture, classify, load_models
from mnistlab.core.evaluation import answers
from mnistlab.core.explain import integrated_gradients

STEPS = (8, 16, 32, 64, 128)


def canvas_png() -> bytes:
    """A 7 as the page sends it: dark strokes on white, 280x280."""
    image = Image.new("RGB", (280, 280), "white")
    ImageDraw.Draw(image).line([(80, 60), (200, 60), (120, 230)], fill="black", width=21, joint="curve")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def completeness(checkpoint, images: np.ndarray) -> None:
    targets = checkpoint.predict_proba(images).argmax(dim=1).tolist()
    print(f"  integrated gradients on {len(images)} test images (relative error of the sum; time per image)")
    for steps in STEPS:
        errors, start = [], time.perf_counter()
        for image, target in zip(images, targets):
            saliency = integrated_gradients(checkpoint, image, target, steps)
            errors.append(saliency.integration_error / max(abs(saliency.change), 1e-9))
        per_image = (time.perf_counter() - start) / len(images)
        print(f"    {steps:4d} steps: median {np.median(errors):6.2%}  p95 {np.percentile(errors, 95):6.2%}  "
              f"{1000 * per_image:6.1f} ms")


def request_cpu(served, repeats: int) -> None:
    source = Picture(canvas_png())
    cases = {"answer and hidden layers": Extras(),
             "with the explanations": Extras(preparation=True, saliency=True, first_layer=True)}
    print(f"  server CPU per 280x280 canvas (median of {repeats})")
    for label, extras in cases.items():
        times = []
        for _ in range(repeats + 1):
            start = time.process_time()
            classify(served, source, True, extras).model_dump_json()
            times.append(time.process_time() - start)
        print(f"    {label:26s} {1000 * statistics.median(times[1:]):6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data-dir")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
          f"Python {platform.python_version()}, one torch thread")
    for served in load_models(args.runs):
        checkpoint = served.checkpoint
        test = checkpoint.load_data(args.data_dir).test
        print(f"{served.name} ({served.info.architecture.model}, {served.info.parameters} weights)")
        completeness(checkpoint, test.images[:args.images].numpy())
        request_cpu(served, args.repeats)
        start = time.perf_counter()
        answers(checkpoint, test)
        print(f"  Explore's pass over {len(test)} test images: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
