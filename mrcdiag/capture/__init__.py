"""What runs inside every training process: recording the job from within.

- `install`: puts the wrappers in place when the script imports torch (`autoimport`,
  armed by `_boot/sitecustomize.py` under `mrcdiag launch`) or at `mrcdiag.attach()`;
- `wrappers`: the hot path around every collective, and the session they record into;
- `ddp`: DDP's C++ all-reduces, seen through a comm hook;
- `attach`, `clock`, `probe`: joining a run (clock offsets, link probe between hosts);
- `recorder`, `device_timer`, `steps`: the buffer and its writer thread, CUDA event
  timing, step boundaries;
- `lifecycle`: the end of recording (exit, SIGTERM, destroy_process_group).

It writes the run directory through store/ and imports nothing above it.
"""
