"""The CPU speed of training, against the machine's FLOP floor, side by side in one process.

Measured, each at 1 and 2 threads (or --threads), alternating so that a change
in the machine's load hits every variant alike, for --repeats rounds, each
round once on the machine as it is ("quiet": no process started by this
script) and once beside one other busy process (a Python loop spinning on one
core, started by this script):

  seed epoch, plain     the seed recipe's epoch (784-128-64-10, batch 64, SGD lr
                        0.003) as the training loop runs it: autograd and
                        torch.optim, batches gathered by training.Batches
  seed epoch, fast      the same epoch through core/fused.py's step
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

Results and how to read them: docs/cpu-speed.md.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from mnistlab.base.models import step_flops
from mnistlab.commands.bench import cpu_model
from mnistlab.core import batched
from mnistlab.core.fused import AutogradStep, make_step
from mnistlab.core.training import Batches, build, load_splits

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


def run_epoch(step, batches: Batches, generator: torch.Generator) -> torch.Tensor:
    """The notebook's loop (the engine's train_epoch) over `step`'s zero_grad, loss, backward, step."""
    total = torch.zeros(())
    for xb, yb in batches.epoch(generator):
        step.zero_grad()
        loss = step.loss(xb, yb)
        step.backward(loss)
        step.step()
        total = total + loss.detach().sum()
    return total / len(batches)


class StackStep:
    """batched.Stack's step (K networks at once) through the same four calls, at its rates of epoch 1."""

    def __init__(self, stack: batched.Stack):
        self.stack, self.lr, self.i, self.losses = stack, stack.lr_table(1), 0, None

    def zero_grad(self) -> None:
        self.stack.zero_grad()

    def loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        self.losses = self.stack.loss(xb, yb)
        return self.losses

    def backward(self, losses: torch.Tensor) -> None:
        self.stack.backward(losses)

    def step(self) -> None:
        self.stack.step(self.losses, self.lr[self.i])
        self.i += 1


def timed(work: Callable[[], Any], threads: int) -> float:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    with flush_denormals(CPU):
        result = work()
    result.tolist()  # the losses, summed on the device, read back: the work is done
    return time.perf_counter() - t0


def variants(splits, steps: int) -> dict[str, Callable[[], Any]]:
    """Each measured thing, as a function of nothing that does it once (a fresh network each time)."""
    seed = recipe("seed", device="cpu", epochs=1)
    part = dataclasses.replace(splits, x=splits.x[:steps * seed.batch_size], y=splits.y[:steps * seed.batch_size])

    def one(data, fast: bool) -> Callable[[], Any]:
        def run():
            t = build(seed, data, CPU)
            step = (make_step if fast else AutogradStep)(t.model, t.optimizer, t.loss_fn)
            return run_epoch(step, Batches(data.x, data.y, seed.batch_size), t.generator)
        return run

    def sixteen():
        group = batched.build_group([seed.replace(seed=s, data_seed=0) for s in range(16)], part, CPU)
        return run_epoch(StackStep(group.stack), group.batches, group.generator)

    return {"seed epoch, plain": one(splits, False), "seed epoch, fast": one(splits, True),
            "one network, plain": one(part, False), "one network, fast": one(part, True),
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


def crossover(threads: tuple[int, ...], repeats: int, log: Callable[[str], None]) -> str:
    """Seconds per step of steps of growing size at each thread count, on random data, as the machine is: where
    more threads start to pay (base/threads.py's SMALL_STEP_FLOPS)."""
    from mnistlab.base.models import CNN, MLP, architecture, loss_function

    x, y = torch.randn(4096, 1, 28, 28), torch.randint(0, 10, (4096,))
    seed = recipe("seed", device="cpu")

    def stepper(model: str, batch: int, members: int = 1):
        torch.manual_seed(0)
        if members > 1:
            configs = [seed.replace(seed=s, batch_size=batch, data_seed=0) for s in range(members)]
            arch = architecture("mlp", (1, 28, 28), 10, seed.hidden, seed.activation, seed.output)
            stack = batched.Stack(configs, arch, CPU, 1)
            lr = torch.full((members,), seed.lr)

            def one(i: int) -> None:
                stack.zero_grad()
                losses = stack.loss(x[i:i + batch], y[i:i + batch])
                stack.backward(losses)
                stack.step(losses, lr)
            return one
        net = (CNN if model == "cnn" else MLP)((1, 28, 28), seed.hidden, 10, "relu", "logits")
        step = make_step(net, torch.optim.SGD(net.parameters(), lr=seed.lr), loss_function("logits"))

        def one(i: int) -> None:
            step.zero_grad()
            step.backward(step.loss(x[i:i + batch], y[i:i + batch]))
            step.step()
        return one

    cases = [("mlp", 64, 1, 300), ("mlp", 256, 1, 100), ("mlp", 1024, 1, 30), ("mlp", 64, 16, 30),
             ("mlp", 2048, 1, 15), ("cnn", 128, 1, 3)]
    seconds: dict[tuple[int, int], list[float]] = {}
    for r in range(repeats):
        for c, (model, batch, members, steps) in enumerate(cases):
            one = stepper(model, batch, members)
            for n in threads:
                torch.set_num_threads(n)
                one(0)
                t0 = time.perf_counter()
                with flush_denormals(CPU):
                    for i in range(steps):
                        one((i * batch) % (4096 - batch))
                seconds.setdefault((c, n), []).append((time.perf_counter() - t0) / steps)
            log(f"crossover round {r + 1}/{repeats}: {model} batch {batch} x{members}")
    lines = ["| step | MFLOP | " + " | ".join(f"{plural_threads(n)} (ms)" for n in threads) + " | fastest |",
             "|---|---:|" + "---:|" * len(threads) + "---|"]
    for c, (model, batch, members, _) in enumerate(cases):
        medians = {n: statistics.median(seconds[(c, n)]) for n in threads}
        best = min(medians, key=medians.get)
        name = f"{model} batch {batch}" + (f", {members} networks batched" if members > 1 else "")
        lines.append(f"| {name} | {step_flops(model, seed.hidden, batch, members) / 1e6:.0f} | "
                     + " | ".join(f"{1e3 * medians[n]:.2f}" for n in threads) + f" | {plural_threads(best)} |")
    return "\n".join(lines)


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def report(m: dict[str, Any], threads: tuple[int, ...], command: str) -> str:
    """The results as Markdown: per condition, a table of seconds per epoch and the ratios asked about."""
    seed = recipe("seed")
    flops_epoch = training_flops({"model": "mlp", "input_shape": [1, 28, 28], "hidden": list(seed.hidden),
                                  "num_classes": 10}) * m["images"]
    scale = m["epoch_batches"] / m["steps"]  # the 16-network rows: from --steps batches to an epoch
    s, rates = m["seconds"], m["rates"]
    seed_flops = step_flops("mlp", seed.hidden, seed.batch_size)
    default = choose_threads(None, seed_flops, load=0.0).threads
    lines = [f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
             f"torch {torch.__version__}",
             f"- date: {datetime.date.today().isoformat()}; command: `{command}`",
             f"- seed epoch: {m['images']} images, {m['epoch_batches']} batches, "
             f"{flops_epoch / 1e9:.1f} GFLOP (forward and backward, 2 per multiply-add); the 16-network rows "
             f"are {m['steps']} batches scaled to an epoch (x{scale:.2f})",
             f"- default thread count for the seed step ({seed_flops / 1e6:.0f} MFLOP): {default}", ""]
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
        for name in ("seed epoch, plain", "seed epoch, fast"):
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
            batched16 = s[(condition, "16 networks batched", n)]
            lines.append(
                f"- {plural_threads(n)}: plain epoch {median_ratio(plain, floor):.1f}x the floor, fast "
                f"{median_ratio(fast, floor):.1f}x; fast "
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
    parser.add_argument("--crossover", action="store_true",
                        help="instead: seconds per step of steps of growing size at each thread count")
    args = parser.parse_args()
    threads = tuple(int(n) for n in args.threads.split(","))
    if args.crossover:
        print(f"load {os.getloadavg()[0]:.1f}")
        print(crossover(threads, args.repeats, lambda line: print(line, file=sys.stderr, flush=True)))
        return
    m = measure(args.data_dir, args.repeats, threads, args.steps, lambda line: print(line, file=sys.stderr, flush=True))
    print(report(m, threads, "PYTHONPATH=src python benchmarks/cpu_speed.py " + " ".join(sys.argv[1:])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seconds": {"|".join(map(str, k)): v for k, v in m["seconds"].items()},
                       "rates": {"|".join(map(str, k)): v for k, v in m["rates"].items()},
                       "loads": m["loads"], "steps": m["steps"]}, f, indent=1)


if __name__ == "__main__":
    main()
