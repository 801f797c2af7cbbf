"""The `mrcdiag` command line: parse, delegate, print. Errors are one line, never a traceback."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

import mrcdiag
from mrcdiag.report import FORMATS

EXIT_FINDINGS = 3  # `report --fail-on` found something at that severity


# Options launch and agent share, declared once
_hang_after_option = click.option(
    "--hang-after",
    type=click.FloatRange(1, 86400),
    default=60.0,
    show_default=True,
    help="Seconds ranks may wait in a collective for others that never arrive (or the job "
    "may go without a step) before the live analysis calls it a hang; well under NCCL's "
    "10-minute watchdog.",
)
_live_option = click.option(
    "--live/--no-live",
    default=True,
    show_default=True,
    help="Analyse the job while it trains (the agent beside global rank 0 does): findings "
    "on stderr, on /metrics (mrcdiag_finding_active) and in RUN_DIR/findings.jsonl.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(mrcdiag.__version__, prog_name="mrcdiag")
def main() -> None:
    """Find out why distributed PyTorch training is slow.

    \b
    Typical use:
      mrcdiag launch -- torchrun --nproc-per-node 8 train.py   # record a run
      mrcdiag report mrcdiag-runs/train-20260101-120000        # explain it
      mrcdiag demo                                             # see it on a toy job
    """


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the run is recorded [default: ./mrcdiag-runs/JOB-TIME].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=9464,
    show_default=True,
    help="Port of this node's /metrics endpoint (0: any free port).",
)
@click.option(
    "--metrics-addr",
    default="0.0.0.0",
    show_default=True,
    help="Address the /metrics endpoint listens on.",
)
@click.option(
    "--job",
    help="Job name for the run directory and metric labels [default: the training script's name].",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.05, 3600),
    default=1.0,
    show_default=True,
    help="Seconds between node samples.",
)
@click.option(
    "--verify-capture",
    is_flag=True,
    help="Also run PyTorch's flight recorder in every rank and, at the end, compare its "
    "collectives with mrcdiag's, per rank, group and op; exit 3 if they differ and the job "
    "succeeded. For new torch versions and new training stacks.",
)
@_hang_after_option
@_live_option
@click.option(
    "--on-hang",
    type=click.Choice(["warn", "dump", "abort"]),
    default="dump",
    show_default=True,
    help="When the live analysis finds a hang: warn only; dump: also have every rank "
    "write its threads' stacks (RUN_DIR/ranks/*/stacks.json, shown by the report); "
    "abort: dump, then end the job and exit 75, so that torchrun's restarts or the "
    "scheduler's retry start without waiting out the collective's timeout.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def launch(
    run_dir: Path | None,
    metrics_port: int,
    metrics_addr: str,
    job: str | None,
    interval: float,
    verify_capture: bool,
    hang_after: float,
    live: bool,
    on_hang: str,
    command: tuple[str, ...],
) -> None:
    """Run a training command with mrcdiag attached to every worker.

    \b
    The command runs unchanged; put it after `--`:
      mrcdiag launch --job llama -- torchrun --nproc-per-node 8 train.py --lr 3e-4
    While it trains, what the analysis finds is printed here as it starts and ends
    (at most one line per finding every 30 s), served on /metrics and appended to
    RUN_DIR/findings.jsonl; `mrcdiag watch RUN_DIR` shows it live. On several nodes, run
    it on each: the node of global rank 0 analyses the whole job.
    The exit code is the job's: 128+N when it died of signal N, 3 with --verify-capture
    when the check failed, 75 when --on-hang abort ended it for a hang.
    """
    from mrcdiag.agent.launch import Launcher
    from mrcdiag.store.layout import job_name_of, new_run_dir

    if not command:
        raise click.UsageError("give the training command after --")
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        raise click.ClickException(
            f"command not found: {command[0]!r}; is torch installed in this environment?"
        )
    job_name = job or job_name_of(command)
    directory = (run_dir or new_run_dir(job_name)).resolve()
    launcher = Launcher(
        list(command),
        directory,
        job_name,
        metrics_port,
        interval,
        metrics_addr=metrics_addr,
        say=_say,
        verify_capture=verify_capture,
        hang_after_s=hang_after,
        live=live,
        on_hang=on_hang,
    )
    code = launcher.run_job()
    if verify_capture:
        from mrcdiag.report.capture import EXIT_CAPTURE_MISMATCH, verify_run

        ok, lines = verify_run(directory)
        for line in lines:
            _say("mrcdiag: " + line)
        if not ok and code == 0:
            code = EXIT_CAPTURE_MISMATCH
    _say(f"mrcdiag: job exited with {code}; explain it with: mrcdiag report {directory}")
    sys.exit(code)


def _flight_dumps(run_dirs: tuple[Path, ...], named: Path | None, problems: list[str]) -> dict:
    """The flight recorder dumps of a run: from --flight-recorder DIR, else those the
    ranks wrote into the run directory (at exit with --verify-capture, or on a hang)."""
    from mrcdiag.store.flight_recorder import FlightRecorderError, read_dump_dir, read_run_dumps

    if named is not None:
        try:
            return read_dump_dir(named, problems)
        except FlightRecorderError as exc:
            raise click.ClickException(str(exc)) from None
    dumps: dict = {}
    for run_dir in run_dirs:
        dumps.update(read_run_dumps(run_dir, problems, at_hang=True))
    return dumps


@main.command()
def topo() -> None:
    """How this node's GPUs are wired, and what it means for collectives.

    \b
    A matrix in the manner of `nvidia-smi topo -m`: between each pair of GPUs, NVLink
    (NV<links>) or the PCIe path (PIX one switch, PXB several bridges, PHB the host
    bridge, NODE within a NUMA node, SYS across sockets), marked * where peer-to-peer
    does not work; each GPU's PCIe link now against its maximum, its NUMA node and the
    CPUs near it. On AMD nodes (amdsmi): XGMI or PCIE between each pair. `mrcdiag
    launch` also stores it in the run directory (nodes/HOST/topology.json)."""
    import socket

    from mrcdiag.collectors.topology import amd_node_topology, node_topology
    from mrcdiag.report.topo import render_topology

    topology, why = node_topology(_nvml_for_topo())
    if topology is None:
        topology, why_amd = amd_node_topology(_amdsmi_for_topo())
        if topology is None:
            click.echo(f"mrcdiag: no GPU to describe on this node ({why}; {why_amd})")
            return
    click.echo(render_topology(topology, socket.gethostname()), nl=False)


def _nvml_for_topo() -> object:
    """The NVML module `topo` reads (tests put a fake of the library here)."""
    return None


def _amdsmi_for_topo() -> object:
    """The amdsmi module `topo` reads where NVML has no GPU (tests: a fake)."""
    return None


def _say(message: str) -> None:
    click.echo(message, err=True)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text for people, json for pipelines, html for a self-contained page with plots, "
    "perfetto for a timeline (ui.perfetto.dev, chrome://tracing).",
)
@click.option(
    "--compare",
    "compare_to",
    type=click.Path(path_type=Path),
    help="A good run of the same job: show what changed (step time, bandwidth, findings).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report to this file instead of standard output.",
)
@click.option(
    "--expected-busbw",
    type=click.FloatRange(min=0, min_open=True),
    metavar="GBPS",
    help="Bus bandwidth the fabric should reach (GB/s, nccl-tests busbw); below half of it "
    "is a low_bus_bandwidth finding.",
)
@click.option(
    "--fail-on",
    type=click.Choice(["warning", "critical"]),
    help="Exit with 3 when an anomaly (a straggler, slowdown, hang, slow link, throttled "
    "GPU...) reaches this severity, for CI and schedulers. Efficiency findings never do.",
)
@click.option(
    "--emit",
    type=click.Choice(["exclude"]),
    help="Instead of the report, print the nodes to take out of the next run (from "
    "critical anomalies and hangs only): a Slurm --exclude hostlist, kubectl cordon and "
    "taint lines, and a plain list. Nothing when no node should go.",
)
@click.option(
    "--flight-recorder",
    "flight_recorder",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="PyTorch flight recorder dumps of this job (the files TORCH_FR_DUMP_TEMP_FILE "
    "names, <prefix><rank>, pickle or JSON): name the first collective the ranks did not "
    "issue alike. Dumps inside the run directory are read without it.",
)
def report(
    run_dirs: tuple[Path, ...],
    fmt: str,
    output: Path | None,
    compare_to: Path | None,
    expected_busbw: float | None,
    fail_on: str | None,
    emit: str | None,
    flight_recorder: Path | None,
) -> None:
    """Explain a run: what made it slow, where, and what it cost.

    \b
    RUN_DIRS is the directory `mrcdiag launch` printed. A multi-node run whose parts sit
    on each node's local disk is read by naming every part:
      mrcdiag report /nfs/runs/job-1
      mrcdiag report node-a/job-1 node-b/job-1 --format json -o report.json
    """
    from mrcdiag.analyzers import analyze
    from mrcdiag.analyzers.findings import severity_rank
    from mrcdiag.report.progress import reading_progress
    from mrcdiag.store.allocator import reuse_freed_memory
    from mrcdiag.store.reader import RunDirError, read_run

    reuse_freed_memory()

    try:
        with reading_progress() as progress:
            # the step rows as [rank, step] arrays: only the timeline draws the rows
            run = read_run(run_dirs, progress, step_grid=fmt != "perfetto")
            analysis = analyze(
                run,
                expected_busbw_gbps=expected_busbw,
                flight_dumps=_flight_dumps(run_dirs, flight_recorder, run.problems),
            )
            baseline = (
                analyze(
                    read_run([compare_to], progress, step_grid=True),
                    expected_busbw_gbps=expected_busbw,
                )
                if compare_to
                else None
            )
    except RunDirError as exc:
        raise click.ClickException(str(exc)) from None
    if fmt in ("html", "perfetto") and output is None:
        raise click.UsageError(f"--format {fmt} writes a file: add --output FILE")
    diff = None
    if baseline is not None:
        from mrcdiag.analyzers.compare import compare

        diff = compare(analysis, baseline)
    from mrcdiag.report import render

    if emit == "exclude":
        from mrcdiag.report.exclude import render_exclude

        text = render_exclude(analysis.findings)
    else:
        text = render(analysis, fmt, diff, color=False if output else None)
    if output:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror}") from None
        click.echo(f"mrcdiag: report written to {output}", err=True)
    else:
        click.echo(text, nl=False)
    if fail_on and any(
        f.is_anomaly and severity_rank(f.severity) >= severity_rank(fail_on)
        for f in analysis.findings
    ):
        sys.exit(EXIT_FINDINGS)


@main.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=9464,
    show_default=True,
    help="Port of the /metrics endpoint (0: any free port).",
)
@click.option("--addr", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option(
    "--interval",
    type=click.FloatRange(0.05, 3600),
    default=1.0,
    show_default=True,
    help="Seconds between samples written to --run-dir.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Record node samples here and serve the metrics of the ranks that write into it.",
)
@click.option("--job", default="", help="Value of the job label.")
@_hang_after_option
@_live_option
def agent(
    port: int,
    addr: str,
    interval: float,
    run_dir: Path | None,
    job: str,
    hang_after: float,
    live: bool,
) -> None:
    """Run the node agent alone (Kubernetes DaemonSet, Slurm prolog, systemd).

    \b
    Serves GPU (NVML, amdsmi), host and InfiniBand/RoCE metrics on /metrics:
      mrcdiag agent --port 9464 --interval 1
    With --run-dir it also serves the metrics of the ranks that write there, their
    records to the live analysis of the job, and runs that analysis when this node holds
    global rank 0 (its findings on stderr and /metrics). Stops on SIGTERM or Ctrl-C.
    """
    import signal
    import threading
    from dataclasses import replace

    from mrcdiag.agent.node import NodeAgent
    from mrcdiag.analyzers.settings import DEFAULTS

    node_agent = NodeAgent(
        run_dir.resolve() if run_dir else None,
        port,
        interval,
        job,
        addr,
        live=live,
        settings=replace(DEFAULTS, hang_after_s=hang_after),
        say=_say,
    )
    try:
        url = node_agent.start()
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {addr}:{port} ({exc.strerror or exc}); is another agent "
            "running? Pick another --port."
        ) from None
    click.echo(f"mrcdiag agent: metrics at {url}", err=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    node_agent.stop()


@main.command()
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option(
    "--url",
    help="A node agent to ask (the one beside global rank 0 analyses the job), e.g. "
    "http://node0:9464; instead of RUN_DIR.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 3600),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option(
    "--plain",
    is_flag=True,
    help="One line per refresh instead of a full-screen view (the default when stdout is "
    "not a terminal).",
)
@click.option("--count", type=click.IntRange(1, None), help="Stop after this many refreshes.")
def watch(
    run_dir: Path | None, url: str | None, interval: float, plain: bool, count: int | None
) -> None:
    """Watch a running job: its pace, its ranks by lateness, what is wrong now.

    \b
      mrcdiag watch mrcdiag-runs/train-20260101-120000   # on a node of the job
      mrcdiag watch --url http://node0:9464              # from anywhere, ask an agent
    With RUN_DIR it analyses what it can read there (and the other nodes' agents named
    in world.json) itself; with --url it shows the analysis that agent already runs.
    Ctrl-C stops it.
    """
    import socket

    from rich.console import Console
    from rich.live import Live

    from mrcdiag.agent.watch import WatchError, agent_state, run_dir_state
    from mrcdiag.agent.watch import watch as loop
    from mrcdiag.report.live_view import render, render_line

    if (run_dir is None) == (url is None):
        raise click.UsageError("give a RUN_DIR or --url AGENT_URL (one of them)")
    try:
        read = agent_state(url) if url else run_dir_state(run_dir.resolve(), socket.gethostname())
        source = url or str(run_dir)
        console = Console()
        if plain or not console.is_terminal:
            loop(read, lambda state: click.echo(render_line(state, source)), interval, count)
            return
        with Live(console=console, auto_refresh=False, screen=False) as view:
            loop(
                read,
                lambda state: view.update(render(state, source), refresh=True),
                interval,
                count,
            )
    except WatchError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        pass


@main.group()
def dashboards() -> None:
    """Grafana dashboards: write them to files, or install them in a Grafana."""


@dashboards.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def dashboards_export(directory: Path) -> None:
    """Write the dashboards as JSON files that Grafana imports as they are."""
    from mrcdiag.grafana.dashboards import export

    try:
        for path in export(directory):
            click.echo(str(path))
    except OSError as exc:
        raise click.ClickException(f"cannot write to {directory}: {exc.strerror}") from None


@dashboards.command("push")
@click.option("--url", required=True, help="Grafana base URL, e.g. http://grafana:3000")
@click.option("--token", envvar="GRAFANA_TOKEN", help="Service-account token [env GRAFANA_TOKEN].")
@click.option("--folder", default="mrcdiag", show_default=True, help="Folder to put them in.")
def dashboards_push(url: str, token: str | None, folder: str) -> None:
    """Install or update the dashboards through the Grafana HTTP API (idempotent)."""
    from mrcdiag.grafana.push import PushError, push

    try:
        titles = push(url, token, folder)
    except PushError as exc:
        raise click.ClickException(str(exc)) from None
    for title in titles:
        click.echo(f"pushed {title} into folder {folder!r}")


@main.command()
@click.option("--steps", type=click.IntRange(10, 10_000), default=60, show_default=True)
@click.option(
    "--slow-ms",
    type=click.FloatRange(0, 10_000),
    default=25.0,
    show_default=True,
    help="Extra compute per step on rank 1.",
)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path))
def demo(steps: int, slow_ms: float, run_dir: Path | None) -> None:
    """Record a 2-rank CPU job with rank 1 made slow on purpose, then report on it."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "mrcdiag demo needs PyTorch: pip install torch (the CPU build is enough)"
        ) from None
    directory = (run_dir or Path("mrcdiag-runs") / "demo").resolve()
    if directory.exists():
        shutil.rmtree(directory)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "-m",
        "mrcdiag.demo_job",
        "--steps",
        str(steps),
        "--slow-rank",
        "1",
        "--slow-ms",
        str(slow_ms),
    ]
    click.echo(
        f"mrcdiag demo: 2 ranks on gloo, rank 1 does {slow_ms:g} ms of extra compute "
        f"per step, {steps} steps",
        err=True,
    )
    from mrcdiag.agent.launch import Launcher

    launcher = Launcher(
        command,
        directory,
        "demo",
        metrics_port=None,
        extra_env={"OMP_NUM_THREADS": "1"},
        say=_say,
    )
    code = launcher.run_job()
    if code != 0:
        raise click.ClickException(f"the demo job failed with exit code {code}")
    ctx = click.get_current_context()
    ctx.invoke(
        report,
        run_dirs=(directory,),
        fmt="text",
        output=None,
        compare_to=None,
        expected_busbw=None,
        fail_on=None,
    )
    click.echo(f"\nThe run directory is {directory}", err=True)


if __name__ == "__main__":
    main()
