"""``edge-infer batch``: the ``run`` pipeline over an archive of cases, on a Dask cluster.

A thin click command over :mod:`edge_infer.batch`. Exit codes: 0 every case succeeded,
4 some cases failed (each has its row in the summary), 2 bad options or inputs.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from .cli_group import EXIT_OK, Group  # noqa: F401  (Group: `python -m edge_infer.cli_batch`)
from .errors import InputError

EXIT_SOME_FAILED = 4


def inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_out(out: Path, inputs) -> None:
    """Refuse an output folder inside an input folder (the next search would find the outputs)."""
    for p in inputs:
        if Path(p).is_dir() and inside(out, Path(p)):
            raise InputError(f"the output folder {out} is inside the input folder {p}; write it elsewhere with -o")


def _options(kw: dict, board):
    from .batch.adapter import RunOptions

    rules: dict[str, list[str]] = {}
    for r in kw.pop("series_rule"):
        if "=" not in r:
            raise click.BadParameter(f"{r!r} is not MODALITY=REGEX (e.g. t1ce='t1.*post')", param_hint="--series-rule")
        mod, regex = r.split("=", 1)
        rules.setdefault(mod.strip().lower(), []).append(regex)
    return RunOptions(**kw, board=board, series_rules=tuple((m, tuple(v)) for m, v in sorted(rules.items())))


def _client(scheduler, workers, threads, board, quiet):
    from .batch import cluster

    if scheduler:
        if workers is not None:
            raise click.UsageError("--workers sizes the local cluster; with --scheduler start `dask worker`s instead")
        client = cluster.connect(scheduler)
        try:
            cluster.check_versions(client)
        except InputError:
            client.close()
            raise
        return client, threads
    sizing = cluster.local_sizing(os.cpu_count() or 1, cluster.available_memory_mb(),
                                  board.memory_budget_mb if board is not None else None, workers, threads)
    if not quiet:
        click.echo(f"local cluster: {sizing.workers} workers x {sizing.threads} backend threads", err=True)
    return cluster.start_local(sizing), sizing.threads


@click.command(cls=click.Command)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: OUT/<case>/ per case, OUT/summary.csv.")
@click.option("--scheduler", default=None, metavar="tcp://HOST:8786",
              help="Run on this Dask cluster [default: a local cluster].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes of the local cluster [default: from the cores and the board's memory budget].")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Backend threads per worker (0: the cores shared out among the workers).")
@click.option("--model", default=None, help="Bundled model name or model folder [default: default].")
@click.option("--backend", type=click.Choice(["onnx", "tflite"]), default=None, help="Inference backend.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None, help="Artifact precision.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Slices or tiles per backend call.")
@click.option("--overlap", type=click.FloatRange(0.0, 0.95), default=None, help="Sliding-window overlap (3D).")
@click.option("--crop/--no-crop", default=True, show_default=True,
              help="Follow the manifest's crop rule; --no-crop runs the full field of view.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None, help="Override the decision threshold(s).")
@click.option("--keep-largest", is_flag=True, help="Keep only the largest connected lesion.")
@click.option("--min-blob-mm3", type=click.FloatRange(min=0.0), default=0.0, help="Remove smaller blobs.")
@click.option("--overlay", is_flag=True, help="Also write a PNG overlay per case.")
@click.option("--format", "out_format", type=click.Choice(["nifti", "seg", "both"]), default="nifti",
              show_default=True, help="Mask as NIfTI, DICOM SEG (DICOM cases only), or both.")
@click.option("--series-rule", multiple=True, metavar="MOD=REGEX", help="DICOM: series description rule (repeatable).")
@click.option("--board", default=None, help="Board profile: plans each case to its budgets, sizes the local cluster.")
@click.option("--ram-mb", type=int, default=None, help="RAM of the board variant.")
@click.option("--profiles-dir", multiple=True, type=click.Path(path_type=Path),
              help="Extra folder of board TOML files.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary lines.")
def batch(inputs, out_dir, scheduler, workers, quiet, board, ram_mb, profiles_dir, **kw):
    """Run every case under INPUTS (folders, or a .csv/.jsonl list) as `run` would, on Dask.

    Writes OUT/<case>/ (the outputs of `run`), OUT/summary.csv (and .parquet), and with
    ground truth (BraTS *_seg.nii.gz, or a truth column) OUT/validation.md and .png.
    Rerunning resumes: complete cases made with the same model and options are skipped.
    Exit codes: 0 all cases succeeded, 4 some failed (see the summary), 2 bad options.

    \b
    Examples:
      edge-infer batch archive/ -o results/
      edge-infer batch cases.csv -o results/ --workers 2 --backend onnx
      edge-infer batch /data/brats/ -o /shared/results --scheduler tcp://10.0.0.5:8786
    """
    from .batch import require_dask

    require_dask()
    from .batch import metrics, runner, summary
    from .batch.cases import find_cases

    check_out(out_dir, inputs)
    b = None
    if board is not None:
        from .boards import get_board

        b = get_board(board, profiles_dir, ram_mb)
    elif ram_mb is not None:
        raise click.UsageError("--ram-mb needs --board")
    cases = find_cases(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    client, threads = _client(scheduler, workers, kw.pop("threads"), b, quiet)
    try:
        link = _dashboard(client) if not quiet else None
        if link:
            click.echo(f"dashboard: {link}", err=True)
        opts = _options({**kw, "threads": threads}, b)
        rows = runner.run_batch(cases, out_dir, client, opts, progress=not quiet and sys.stderr.isatty())
    except BaseException:
        _close(client, local=scheduler is None)
        raise
    # the cluster winds down (about a second) while the summary and the report are written
    with ThreadPoolExecutor(1, thread_name_prefix="close-cluster") as pool:
        closing = pool.submit(_close, client, scheduler is None)
        written = summary.write_summary(rows, out_dir)
        metrics.write_report(rows, out_dir, f"Validation of {rows[0].get('model', 'the model')} "
                                             f"{rows[0].get('model_version', '')}")
        closing.result()  # its error, if any, is this command's
    failed = [r for r in rows if r["status"] != "ok"]
    if not quiet:
        click.echo(f"{len(rows) - len(failed)} of {len(rows)} cases ok, {len(failed)} failed; "
                   f"summary: {written['summary.csv']}")
        _figures(rows, b)
    if failed:
        sys.exit(EXIT_SOME_FAILED)


def _figures(rows, board) -> None:
    """The steady-state rate and the workers' peak RSS against the board's budget, a line each."""
    from .batch.figures import rss_line, steady_throughput

    rate = steady_throughput(rows)
    if rate is not None:
        click.echo(f"steady state: {rate:.2f} cases/s (after every worker's first case)")
    line = rss_line(rows, board.memory_budget_mb if board is not None else None, getattr(board, "name", None))
    if line:
        click.echo(line)


def _dashboard(client) -> str | None:
    """The Dask dashboard's address, when bokeh is installed and the scheduler serves one."""
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        return None
    try:
        return client.dashboard_link
    except (KeyError, AttributeError):
        return None


def _close(client, local: bool) -> None:
    cluster = client.cluster if local else None
    client.close()
    if cluster is not None:
        cluster.close()


@click.group(cls=Group)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(debug: bool) -> None:
    """``python -m edge_infer.cli_batch batch ...``: the batch command on its own."""


main.add_command(batch)

if __name__ == "__main__":  # pragma: no cover
    main()
