"""A SIGTERM that arrives while the rank is closing its records (at exit, typically right
after a collective failed because a peer died, when torchrun terminates the survivors).

One rank, a few collectives, then detach(); the recorder's final flush first sends this
process SIGTERM, so the handler runs in the middle of the close, with the records still
in memory (the writer thread's half-second tick has not come: its interval is set long).

    python sigterm_while_closing.py RUN_DIR N_COLLECTIVES
"""

import os
import signal
import sys

import torch
import torch.distributed as dist

import mrcdiag
from mrcdiag.capture import lifecycle, wrappers
from mrcdiag.capture import recorder as recorder_module

recorder_module.FLUSH_INTERVAL_S = 3600.0  # nothing reaches the disk before the close


def main() -> None:
    run_dir, count = sys.argv[1], int(sys.argv[2])
    dist.init_process_group("gloo", init_method=f"file://{run_dir}.store", rank=0, world_size=1)
    assert mrcdiag.attach(run_dir=run_dir, job="sigterm")
    recorder = wrappers.current_session().recorder
    for _ in range(count):
        dist.all_reduce(torch.ones(4))
    flush = recorder.flush

    def flush_after_sigterm() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # its Python handler runs at the next line
        flush()

    recorder.flush = flush_after_sigterm
    lifecycle.detach()
    print("survived SIGTERM", flush=True)  # must not: the signal is re-sent after the close


if __name__ == "__main__":
    main()
