"""``edge-infer serve`` and ``edge-infer watch``: the device as a DICOM node or a drop folder.

Thin click commands over :mod:`edge_infer.node`. Registered on the main group in
:mod:`edge_infer.cli`; ``python -m edge_infer.cli_node`` runs them on their own.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .cli_group import Group
from .vocab import BACKENDS


def _setup_logging(verbose: int) -> None:
    """Our log at INFO (DEBUG with -vv); other libraries' at WARNING (pynetdicom INFO and its
    per-message lines with -v). highdicom logs raw UIDs at INFO and pynetdicom request
    identifiers: both stay off."""
    from .node.logs import setup_logging

    setup_logging(logging.DEBUG if verbose > 1 else logging.INFO, logging.INFO if verbose else logging.WARNING,
                  pynetdicom_lines=bool(verbose))


def node_options(f):
    """Options shared by ``serve`` and ``watch`` (each overrides the TOML file's key)."""
    opts = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     default=None, help="TOML configuration file (flags override its keys)."),
        click.option("--spool", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Spool folder: received instances, state, outbox, failed, audit log."),
        click.option("--idle-seconds", type=float, default=None,
                     help="A study (or dropped file) is complete after this long without a change [10]."),
        click.option("--destination", default=None, metavar="AE@HOST:PORT|dicomweb+https://URL",
                     help="Send SEG results here with C-STORE, or STOW-RS (retried until delivered; "
                          "credentials only from the config file's credentials_file/credentials_env)."),
        click.option("--model", default=None, help="Bundled model name or model folder [default]."),
        click.option("--backend", type=click.Choice(BACKENDS), default=None, help="Inference backend."),
        click.option("--threads", type=click.IntRange(min=0), default=None, help="Backend threads (0: default)."),
        click.option("--nifti/--no-nifti", default=None, help="Also put the NIfTI mask into the outbox."),
        click.option("-v", "--verbose", count=True, help="More logging (-v: pynetdicom INFO, -vv: DEBUG)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _config(config_path, **overrides):
    from .node.config import load_config

    return load_config(config_path, **overrides)


@click.command()
@node_options
@click.option("--ae-title", default=None, help="This node's AE title [EDGE_INFER].")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="TCP port to listen on [11112].")
@click.option("--bind", default=None, help="Address to listen on [127.0.0.1].")
@click.option("--allow", "allowed_aes", multiple=True, metavar="AE",
              help="Calling AE title allowed to associate (repeatable; none: any).")
@click.option("--max-associations", type=click.IntRange(min=1), default=None, help="Concurrent associations [4].")
@click.option("--max-pdu", type=click.IntRange(min=0), default=None,
              help="Maximum PDU size in bytes, 0 unlimited [65536].")
@click.option("--timeout", type=float, default=None, help="ACSE, DIMSE and network timeout in seconds [30/30/60].")
@click.option("--health-port", type=click.IntRange(0, 65535), default=None,
              help="HTTP port for /healthz, /readyz, /metrics (0: off) [0].")
@click.option("--health-bind", default=None, help="Address of the health endpoint [127.0.0.1].")
def serve(config_path, verbose, allowed_aes, timeout, **kwargs):
    """Run as a DICOM node: receive scans (C-STORE), segment complete studies, send back DICOM SEG.

    A study is processed once no instance of it has arrived for --idle-seconds. Every standard
    storage class is acknowledged; only MR instances (job_modalities, job_sop_classes) start a
    job, the rest (SEG, SR, CT...) are kept aside and audited. Results (SEG, report, optionally
    the NIfTI mask) go to SPOOL/outbox and, with --destination, the SEG is sent back with
    C-STORE. Stop with Ctrl-C or SIGTERM (open transfers get stop_timeout seconds); a restart
    resumes unfinished work and retries pending sends at once.

    \b
    Example:
      edge-infer serve --spool /var/lib/edge-infer --port 11112 --allow SCANNER1 \\
          --destination PACS@127.0.0.1:104 --idle-seconds 10
      edge-infer serve --config /etc/edge-infer/node.toml
    """
    from .node.service import serve as run_serve

    _setup_logging(verbose)
    if timeout is not None:
        kwargs.update(acse_timeout=timeout, dimse_timeout=timeout, network_timeout=timeout)
    config = _config(config_path, allowed_aes=list(allowed_aes) or None, **kwargs)
    run_serve(config)


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
@node_options
def watch(folder, config_path, verbose, **kwargs):
    """Watch FOLDER: segment DICOM series and NIfTI cases dropped into it.

    A file counts once it has not changed for --idle-seconds; it is then moved into the
    spool (and removed from FOLDER). DICOM results are a SEG (sent to --destination if
    given); NIfTI cases give a NIfTI mask. Results and reports go to SPOOL/outbox.

    \b
    Example:
      edge-infer watch /srv/dropbox --spool /var/lib/edge-infer --idle-seconds 30
      edge-infer watch incoming/ --spool spool/ --destination PACS@127.0.0.1:104 --nifti
    """
    from .node.service import watch as run_watch

    _setup_logging(verbose)
    config = _config(config_path, **kwargs)
    run_watch(folder, config)


@click.command()
@click.argument("study")
@click.option("--spool", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True,
              help="The node's spool folder.")
def rerun(study, spool):
    """Segment STUDY (the study hash from the audit log) again and send its result again.

    A resend of an unchanged study is ignored on purpose (audited as resend_ignored); this
    asks the running node (or the next one started on SPOOL) to run it once more.

    \b
    Example:
      edge-infer rerun --spool /var/lib/edge-infer 3f2a9c0d1e2b4a5f
    """
    from .node.spool import Spool

    try:
        Spool(spool).request_rerun(study)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(f"{exc}; give a study hash from the audit log (audit.jsonl)") from None
    click.echo(f"re-run of study {study} requested")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(debug: bool) -> None:
    """edge-infer node commands (serve, watch) on their own."""


main.add_command(serve)
main.add_command(watch)
main.add_command(rerun)

if __name__ == "__main__":  # pragma: no cover
    main()
