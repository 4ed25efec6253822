"""`python -m mnistlab` and the `mnistlab` command (`run`): the command line, and Ctrl-C while it starts
said in one line.

Importing torch, numpy and scipy takes a second or two; a KeyboardInterrupt raised in the middle of an
import can leave a half-made module behind and surface as any error at all. So the imports run with
Ctrl-C (and SIGTERM) only noted, and the command then ends as interrupted.
"""

import signal
import sys

STOPS = (signal.SIGINT, signal.SIGTERM)


def run() -> int:
    noted: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: noted.append(signum)) for s in STOPS}
    try:
        from .cli import main
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if noted:
        print("\nmnistlab: interrupted while starting", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
