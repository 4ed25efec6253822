"""base/system.py: what a long-running command asks of the operating system."""

import os
import signal
import threading
import time

import pytest

from mnistlab.base.system import signals_held


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_sent_from_another_thread_waits_for_the_held_block(stop):
    """The kernel hands a process's signal to any thread that does not block it (torch and tqdm start
    threads): whichever thread takes it, the handler runs after the block, once."""
    seen = []
    previous = signal.signal(stop, lambda signum, frame: seen.append(("handled", signum)))
    go = threading.Event()
    sender = threading.Thread(target=lambda: (go.wait(10), os.kill(os.getpid(), stop)))
    sender.start()  # before the block: its signal mask is the process's, nothing blocked
    try:
        with signals_held():
            go.set()
            sender.join(10)
            time.sleep(0.2)  # time for a handler to run, if it could
            seen.append("block done")
        assert seen == ["block done", ("handled", stop)]
    finally:
        signal.signal(stop, previous)


def test_outside_the_main_thread_the_block_runs_as_it_is():
    done = []

    def body():
        with signals_held():
            done.append(True)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert done == [True]
