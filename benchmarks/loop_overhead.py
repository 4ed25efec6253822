"""What the engine's one loop costs against the notebook's loop written inline, side by side in one process.

    python benchmarks/loop_overhead.py [--data-dir DIR] [--repeats 7] [--recipe seed]

The engine drives every trainee through an interface (zero_grad, loss, backward, step) and checks the
clock after each step for its progress events; the notebook writes the five lines inline. Both train
the same network from the same state on the same batches; epochs alternate (engine, inline, engine,
...) so that a change in the machine's load hits both, and the ratio is taken pair by pair.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from mnistlab.base.config import recipe
from mnistlab.base.devices import flush_denormals
from mnistlab.core import engine, training


def inline_epoch(t: training.Trainee) -> torch.Tensor:
    """The notebook's loop, written out."""
    t.model.train()
    total = torch.zeros((), device=t.batches.y.device)
    for xb, yb in t.batches.epoch(t.generator):
        t.optimizer.zero_grad()
        loss = t.loss_fn(t.model(xb), yb)
        loss.backward()
        t.optimizer.step()
        if t.schedule is not None:
            t.schedule.step()
        total += loss.detach()
    return total / len(t.batches)


class Unheard:
    """Stands for a run's members: the progress events go nowhere, but the clock is read after every step."""

    def progress(self, *args) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--recipe", default="seed")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device = torch.device("cpu")
    config = recipe(args.recipe, device="cpu", epochs=1)
    splits = training.load_splits(config, args.data_dir, device)
    start = training.build(config, splits, device)
    seconds = {"engine": [], "inline": []}
    cpu = {"engine": [], "inline": []}  # this process's CPU time: less swayed by other processes than the clock
    for _ in range(args.repeats):
        for side in seconds:
            t = copy.deepcopy(start)  # the same weights, optimiser and batch order every time
            with flush_denormals(device):
                began, began_cpu = time.perf_counter(), time.process_time()
                if side == "engine":
                    # as fit() calls it: with its progress closure checking the clock after every step
                    engine.train_epoch(t, engine._progress(Unheard(), 1, len(t.batches)))
                else:
                    inline_epoch(t)
                seconds[side].append(time.perf_counter() - began)
                cpu[side].append(time.process_time() - began_cpu)
    ratios = [a / b for a, b in zip(seconds["engine"], seconds["inline"])]
    cpu_ratios = [a / b for a, b in zip(cpu["engine"], cpu["inline"])]
    print(json.dumps({"recipe": args.recipe, "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "engine_median_s": statistics.median(seconds["engine"]),
                      "inline_median_s": statistics.median(seconds["inline"]),
                      "engine_over_inline_median": statistics.median(ratios), "ratios": ratios,
                      "cpu_engine_median_s": statistics.median(cpu["engine"]),
                      "cpu_inline_median_s": statistics.median(cpu["inline"]),
                      "cpu_engine_over_inline_median": statistics.median(cpu_ratios), "cpu_ratios": cpu_ratios},
                     indent=1))


if __name__ == "__main__":
    main()
