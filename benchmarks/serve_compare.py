"""Two source trees' servers under the same load, alternated: before and after a change, side by side.

    python benchmarks/serve_compare.py RUN --before OTHER/src [--after src] [--rounds 3]
        [--bodies png,array] [-- SERVE_LOAD_FLAGS ...]

Runs `benchmarks/serve_load.py RUN --json` (with the flags after `--`) against a server started from
each tree in turn (`PYTHONPATH=TREE`), before, after, before, after, ... for each body, and prints
the medians of each side and their ratio. Alternating means that both sides see the same machine:
on a shared machine the load swings from minute to minute, and the server's CPU time per request,
though much steadier than its latency, moves with it too (caches, frequency).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

LOAD = Path(__file__).with_name("serve_load.py")
COLUMNS = [  # (key in serve_load's phase, heading, format)
    ("server_cpu_ms_per_request", "server CPU/request ms", "{:.3f}"),
    ("server_user_ms_per_request", "user ms", "{:.3f}"),
    ("server_system_ms_per_request", "system ms", "{:.3f}"),
    ("server_page_faults_per_request", "faults", "{:.0f}"),
    ("requests_per_second", "requests/s", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("load_average", "load", "{:.1f}"),
]


def one_load(model: str, tree: str, body: str, flags: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    done = subprocess.run([sys.executable, str(LOAD), model, "--json", "--body", body, *flags], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"serve_compare: serve_load failed with {tree}: {(done.stderr or done.stdout).strip()[-500:]}")
    result = json.loads(done.stdout)
    phase = result["phases"]["load"]
    if not phase["ok"] or phase["right"] != phase["ok"]:
        print(f"  note: {tree} answered {phase['right']} of {phase['ok']} drawings right", file=sys.stderr)
    return phase


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="run directory or checkpoint to serve")
    parser.add_argument("--before", required=True, help="the source tree (a folder holding mnistlab/) of one side")
    parser.add_argument("--after", default=str(Path(__file__).parent.parent / "src"),
                        help="the other side (default: this checkout's src)")
    parser.add_argument("--rounds", type=int, default=3, help="loads of each side for each body (default: 3)")
    parser.add_argument("--bodies", default="png,array", help="serve_load --body values, comma-separated")
    argv = sys.argv[1:]
    flags = argv[argv.index("--") + 1:] if "--" in argv else []  # for serve_load.py, e.g. --requests 2000
    args = parser.parse_args(argv[:len(argv) - len(flags) - (1 if flags or "--" in argv else 0)])
    args.flags = flags
    sides = {"before": args.before, "after": args.after}
    print(f"before: {args.before}\nafter:  {args.after}\nserve_load flags: {' '.join(args.flags) or '(none)'}; "
          f"{args.rounds} rounds, alternated; medians")
    for body in args.bodies.split(","):
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, tree in sides.items():
                runs[side].append(one_load(args.model, tree, body, args.flags))
                last = runs[side][-1]
                print(f"  {body} {side}: {last['server_cpu_ms_per_request']:.3f} ms/request, "
                      f"{last['server_page_faults_per_request']:.0f} faults, {last['requests_per_second']:.0f}/s, "
                      f"load {last['load_average']:.1f}", flush=True)
        print(f"{body}: " + " | ".join(heading for _, heading, _ in COLUMNS))
        medians = {side: {key: statistics.median(r[key] for r in results) for key, _, _ in COLUMNS}
                   for side, results in runs.items()}
        for side in sides:
            print(f"  {side:6s} " + " | ".join(fmt.format(medians[side][key]) for key, _, fmt in COLUMNS))
        cpu = "server_cpu_ms_per_request"
        print(f"  server CPU per request: before/after = {medians['before'][cpu] / medians['after'][cpu]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
