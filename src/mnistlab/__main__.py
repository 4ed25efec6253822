"""`python -m mnistlab` and the `mnistlab` command (`run`): the command line, and Ctrl-C while it starts
said in one line.

Importing torch, numpy and scipy takes a second or two; a KeyboardInterrupt raised in the middle of an
import can leave a half-made module behind and surface as any error at all. So the imports run with
Ctrl-C (and SIGTERM) only noted, and the command then ends as interrupted.
"""

import sys

from .base.system import signals_noted  # the standard library only: nothing to interrupt


def run() -> int:
    with signals_noted() as noted:
        from .cli import main
    if noted:
        print("\nmnistlab: interrupted while starting", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
