"""The CPU speed of training, against the machine's FLOP floor, side by side in one process.

Measured, each at 1 and 2 threads (or --threads), alternating so that a change
in the machine's load hits every variant alike, for --repeats rounds, each
round once on the machine as it is ("quiet": no process started by this
script) and once beside one other busy process (a Python loop spinning on one
core, started by this script):

  seed epoch, plain     the seed recipe's epoch (784-128-64-10, batch 64, SGD lr
                        0.003) through training.train_epoch: autograd and
                        torch.optim, batches gathered by training.Batches
  seed epoch, fast      the same epoch through core/fused.py's step
  seed epoch, fast + index_select
                        the fast step on batches gathered with index_select
                        instead of advanced indexing (a change Batches could take)
  FLOP floor            the epoch's floating-point operations (forward and
                        backward, 2 per multiply-add: 27.3 G for 60,000 images)
                        divided by the rate of a 2048x2048 matrix product on
                        the same threads
  16 batched            16 seed networks trained at once (core/batched.py), and
                        one network alone, plain and fast, for --steps batches

Each row gives the median seconds (per epoch: 938 batches; the batched rows are
scaled from --steps batches to an epoch) and the spread. The ratios are
medians of per-round ratios, both sides of each measured minutes apart at most.

    PYTHONPATH=src python benchmarks/cpu_speed.py --data-dir DIR [--repeats 3] [--json out.json]

Results and how to read them: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch

from mnistlab.base.config import recipe
from mnistlab.base.devices import flush_denormals
from mnistlab.base.models import training_flops
from mnistlab.base.threads import choose_threads, plural_threads
from mnistlab.commands.bench import cpu_model, step_flops
from mnistlab.core import batched
from mnistlab.core.fused import make_step
from mnistlab.core.training import Batches, build, load_splits, train_epoch

CPU = torch.device("cpu")


def matmul_rate(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a size x size float32 matrix product on `threads` threads (the median of `repeats`)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * size ** 3 / statistics.median(times)


def fast_epoch(trainee, batches=None) -> torch.Tensor:
    """training.train_epoch's loop through make_step (what training.py would run with the fast step)."""
    step = make_step(trainee.model, trainee.optimizer, trainee.loss_fn)
    total = torch.zeros(())
    batches = batches or trainee.batches
    for xb, yb in batches.epoch(trainee.generator):
        step.zero_grad()
        loss = step.loss(xb, yb)
        step.backward(loss)
        step.step()
        total += loss.detach()
    return total / len(batches)


class IndexSelectBatches(Batches):
    """training.Batches, gathering each batch with index_select (a row copy) instead of x[idx]."""

    def epoch(self, generator):
        n = len(self.y)
        perm = torch.randperm(n, device=self.y.device, generator=generator)
        flat = self.x.view(n, -1)
        for start in self.starts():
            idx = perm[start:start + self.batch_size]
            yield flat.index_select(0, idx).view(len(idx), *self.shape), self.y[idx]


def timed(work: Callable[[], Any], threads: int) -> float:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    with flush_denormals(CPU):
        result = work()
    if isinstance(result, torch.Tensor):
        result.tolist()  # wait for the work (the loss is summed without syncing)
    return time.perf_counter() - t0


def variants(splits, steps: int) -> dict[str, Callable[[], Any]]:
    """Each measured thing, as a function of nothing that does it once (a fresh network each time)."""
    seed = recipe("seed", device="cpu", epochs=1)
    part = seed.replace(train_size=steps * seed.batch_size)

    def plain():
        t = build(seed, splits, CPU)
        return train_epoch(t.model, t.optimizer, t.schedule, t.loss_fn, t.batches, t.generator)

    def fast():
        return fast_epoch(build(seed, splits, CPU))

    def fast_index_select():
        t = build(seed, splits, CPU)
        return fast_epoch(t, IndexSelectBatches(splits.x, splits.y, seed.batch_size))

    def one_of_16(fused: bool):
        def run():
            t = build(part, splits, CPU)
            t.batches = Batches(splits.x[:steps * seed.batch_size], splits.y[:steps * seed.batch_size],
                                seed.batch_size)
            if fused:
                return fast_epoch(t)
            return train_epoch(t.model, t.optimizer, t.schedule, t.loss_fn, t.batches, t.generator)
        return run

    def sixteen():
        configs = [part.replace(seed=s, data_seed=0) for s in range(16)]
        group = batched.build_group(configs, splits_part, CPU)
        return batched.train_epoch(group.stack, group.batches, group.generator, group.stack.lr_table(1))

    splits_part = type(splits)(splits.x[:steps * seed.batch_size], splits.y[:steps * seed.batch_size],
                               splits.x_test, splits.y_test, None, None, splits.dataset)
    return {"seed epoch, plain": plain, "seed epoch, fast": fast,
            "seed epoch, fast + index_select": fast_index_select,
            "one network, plain": one_of_16(False), "one network, fast": one_of_16(True),
            "16 networks batched": sixteen}


def busy_process() -> subprocess.Popen:
    """Another process keeping one core busy (as a second user's job would)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(data_dir: str | None, repeats: int, threads: tuple[int, ...], steps: int,
            log: Callable[[str], None]) -> dict[str, Any]:
    splits = load_splits(recipe("seed", device="cpu"), data_dir, CPU)
    work = variants(splits, steps)
    for fn in work.values():  # untimed first calls: allocator, kernel choice
        timed(fn, 1)
    seconds: dict[tuple[str, str, int], list[float]] = {}
    rates: dict[tuple[str, int], list[float]] = {}
    loads = {"quiet": [], "busy": []}
    for r in range(1, repeats + 1):
        for condition in ("quiet", "busy"):
            other = busy_process() if condition == "busy" else None
            try:
                time.sleep(1.0 if other else 0.0)  # let it take its core
                loads[condition].append(os.getloadavg()[0])
                for n in threads:
                    rates.setdefault((condition, n), []).append(matmul_rate(n))
                    for name, fn in work.items():
                        spent = timed(fn, n)
                        seconds.setdefault((condition, name, n), []).append(spent)
                        log(f"round {r}/{repeats} {condition:5s} {plural_threads(n):9s} {name:32s} {spent:7.3f} s")
            finally:
                if other:
                    other.kill()
                    other.wait()
    return {"seconds": seconds, "rates": rates, "loads": loads, "steps": steps,
            "epoch_batches": len(Batches(splits.x, splits.y, 64)), "images": len(splits.y)}


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def report(m: dict[str, Any], threads: tuple[int, ...], command: str) -> str:
    """The results as Markdown: per condition, a table of seconds per epoch and the ratios asked about."""
    seed = recipe("seed")
    flops_epoch = training_flops({"model": "mlp", "input_shape": [1, 28, 28], "hidden": list(seed.hidden),
                                  "num_classes": 10}) * m["images"]
    scale = m["epoch_batches"] / m["steps"]  # the 16-network rows: from --steps batches to an epoch
    s, rates = m["seconds"], m["rates"]
    default = choose_threads(None, step_flops(seed), load=0.0).threads
    lines = [f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
             f"torch {torch.__version__}",
             f"- date: {datetime.date.today().isoformat()}; command: `{command}`",
             f"- seed epoch: {m['images']} images, {m['epoch_batches']} batches, "
             f"{flops_epoch / 1e9:.1f} GFLOP (forward and backward, 2 per multiply-add); the 16-network rows "
             f"are {m['steps']} batches scaled to an epoch (x{scale:.2f})",
             f"- default thread count for the seed step ({step_flops(seed) / 1e6:.0f} MFLOP): {default}", ""]
    for condition in ("quiet", "busy"):
        loads = m["loads"][condition]
        lines += [f"### {'The machine as it is' if condition == 'quiet' else 'Beside one other busy process'} "
                  f"(1-minute load average {min(loads):.1f}-{max(loads):.1f} at the start of each round)", ""]
        lines.append("| | " + " | ".join(plural_threads(n) for n in threads) + " |")
        lines.append("|---|" + "---:|" * len(threads))

        def cell(values: list[float], factor: float = 1.0) -> str:
            values = [v * factor for v in values]
            return f"{statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"

        lines.append("| matrix product 2048x2048 | " + " | ".join(
            f"{statistics.median(rates[(condition, n)]) / 1e9:.0f} GFLOP/s" for n in threads) + " |")
        lines.append("| FLOP floor of a seed epoch | " + " | ".join(
            f"{flops_epoch / statistics.median(rates[(condition, n)]):.3f} s" for n in threads) + " |")
        for name in ("seed epoch, plain", "seed epoch, fast", "seed epoch, fast + index_select"):
            lines.append(f"| {name} | " + " | ".join(cell(s[(condition, name, n)]) for n in threads) + " |")
        for name, factor in (("one network, plain", 16 * scale), ("one network, fast", 16 * scale),
                             ("16 networks batched", scale)):
            label = f"16 networks one after another, {name.split(', ')[1]}" if name.startswith("one") else name
            lines.append(f"| {label} | " + " | ".join(cell(s[(condition, name, n)], factor) for n in threads)
                         + " |")
        lines.append("")
        for n in threads:
            floor = [flops_epoch / rate for rate in rates[(condition, n)]]
            plain, fast = s[(condition, "seed epoch, plain", n)], s[(condition, "seed epoch, fast", n)]
            gather = s[(condition, "seed epoch, fast + index_select", n)]
            batched16 = s[(condition, "16 networks batched", n)]
            lines.append(
                f"- {plural_threads(n)}: plain epoch {median_ratio(plain, floor):.1f}x the floor, fast "
                f"{median_ratio(fast, floor):.1f}x, fast + index_select {median_ratio(gather, floor):.1f}x; fast "
                f"step {median_ratio(plain, fast):.2f}x faster than plain; 16 batched "
                f"{median_ratio([16 * x for x in s[(condition, 'one network, plain', n)]], batched16):.2f}x faster "
                f"than 16 plain one after another, "
                f"{median_ratio([16 * x for x in s[(condition, 'one network, fast', n)]], batched16):.2f}x than 16 "
                "fast")
        for name in ("seed epoch, plain", "seed epoch, fast"):
            per_round = list(zip(*(s[(condition, name, n)] for n in threads)))
            worst = max(r[threads.index(default)] / min(r) for r in per_round) if default in threads else None
            medians = {n: statistics.median(s[(condition, name, n)]) for n in threads}
            best = min(medians, key=medians.get)
            if worst is not None:
                lines.append(f"- {name}: the default ({plural_threads(default)}) against the fastest count "
                             f"({plural_threads(best)} by median): {medians[default] / medians[best]:.2f}x by "
                             f"medians, at worst {worst:.2f}x in one round")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="folder holding MNIST's IDX files (default: the usual places)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each quiet then busy (default: 3)")
    parser.add_argument("--threads", default="1,2", help="thread counts compared (default: 1,2)")
    parser.add_argument("--steps", type=int, default=200,
                        help="batches for the 16-network rows, scaled to an epoch (default: 200)")
    parser.add_argument("--json", help="also write every raw timing to this file")
    args = parser.parse_args()
    threads = tuple(int(n) for n in args.threads.split(","))
    m = measure(args.data_dir, args.repeats, threads, args.steps, lambda line: print(line, file=sys.stderr, flush=True))
    print(report(m, threads, "PYTHONPATH=src python benchmarks/cpu_speed.py " + " ".join(sys.argv[1:])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seconds": {"|".join(map(str, k)): v for k, v in m["seconds"].items()},
                       "rates": {"|".join(map(str, k)): v for k, v in m["rates"].items()},
                       "loads": m["loads"], "steps": m["steps"]}, f, indent=1)


if __name__ == "__main__":
    main()
