"""Commands that bring a model trained elsewhere: ``from-torch``, ``import-onnx``, ``import-tflite``.

Thin click commands over :mod:`export.byom`, :mod:`export.sources` and
:mod:`export.import_onnx`. Bad input (a spec that fails the validator, a file that cannot be
imported, an export that fails, parity past tolerance) is one line on stderr and exit code
2; the model folder is written under a temporary name and renamed only at the end.
"""

from __future__ import annotations

import click

from .cli_errors import BAD_INPUT, BadInput, refusing  # noqa: F401  (BAD_INPUT: public, as before)


def _spec_option(fn):
    return click.option("--spec", "spec", required=True, type=click.Path(dir_okay=False),
                        help="the manifest without artifacts, .json or .toml (docs/manifest.md)")(fn)


def _write_options(fn):
    fn = click.option("--overwrite", is_flag=True, help="replace OUT if it exists")(fn)
    fn = click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16", "int8"]),
                      default=("fp32",), show_default=True)(fn)
    return fn


def _parity_option(fn):
    return click.option("--parity-scan", "parity_scan", multiple=True, type=click.Path(exists=True),
                        help="the scan parity is checked on (NIfTI files, a case folder or a DICOM folder, "
                             "read as edge-infer run reads it); default: a synthetic phantom")(fn)


def _source_check(paths, spec: dict, reference, name: str):
    from .source_parity import SourceCheck, phantom_volume, scan_volume

    mods = spec["input"]["modalities"]
    return SourceCheck(scan_volume(paths, mods) if paths else phantom_volume(mods), reference, name)


def _echo_result(out, manifest) -> None:
    parity = manifest.provenance.get("parity") or {}
    vol = parity.get("volume", {})
    click.echo(f"parity vs {parity.get('reference')} on a {vol.get('kind')} volume {vol.get('shape')}:")
    for key, row in parity.get("artifacts", {}).items():
        dice = " ".join(f"{c} {d:.4f}" for c, d in row["dice"].items())
        click.echo(f"  {key:12s} Dice {dice}; max |dp| {row['max_prob_diff']:.2e}")
    click.echo(f"wrote {out}: " + ", ".join(f"{a.file} ({a.bytes:,} B)" for a in manifest.artifacts))


@click.command("from-torch")
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@_spec_option
@click.option("--factory", default=None, help="package.module:function building the network, when SOURCE is a state dict")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["onnx", "tflite"]), default=("onnx",), show_default=True)
@_write_options
@refusing
def from_torch(source, out, spec, factory, backends, precisions, overwrite):
    """Package a PyTorch model: TorchScript, a .pt2 program, or --factory plus a state dict.

    \b
    Examples:
        python -m export from-torch net.ts.pt models/mine --spec spec.toml
        python -m export from-torch weights.safetensors models/mine --spec spec.json \\
            --factory mypkg.nets:build --precision fp16
    """
    from .byom import package
    from .sources import load_torch_source

    module = load_torch_source(source, factory)
    manifest = package(module, out, spec, backends=backends, precisions=precisions, overwrite=overwrite,
                       provenance={"source_file": click.format_filename(source).rsplit("/", 1)[-1],
                                   **({"factory": factory} if factory else {})})
    _echo_result(out, manifest)


def _modality_map(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, mod = pair.rpartition("=")
        if not sep or not name:
            raise BadInput(f"--modality-map {pair!r} is not CHANNEL_NAME=MODALITY (e.g. T1c=t1ce)")
        out[name] = mod.lower()
    return out


@click.command("from-nnunet")
@click.argument("results_folder", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--fold", default=0, show_default=True, help="fold_N whose checkpoint is exported")
@click.option("--checkpoint", type=click.Choice(["final", "best"]), default="final", show_default=True)
@click.option("--stored-orientation", default="RAS", show_default=True,
              help="axis code of the NIfTI files nnU-Net was trained on (BraTS as distributed: LPS)")
@click.option("--modality-map", "modality_map", multiple=True, help="CHANNEL_NAME=MODALITY for a channel name the aliases miss")
@_parity_option
@_write_options
@refusing
def from_nnunet(results_folder, out, fold, checkpoint, stored_orientation, modality_map, parity_scan, precisions,
                overwrite):
    """Package an nnU-Net v2 results folder (TRAINER__PLANS__CONFIGURATION): plans, labels or
    regions, normalisation, patch size, step 0.5 with Gaussian blending; mirroring off.

    \b
    Example:
        python -m export from-nnunet nnUNet_results/Dataset501_BraTS/nnUNetTrainer__nnUNetPlans__3d_fullres \\
            models/brats-nnunet --fold 0 --precision fp16
    """
    from .byom import package
    from .nnunet import PREDICTOR, load_nnunet, nnunet_reference

    net, spec = load_nnunet(results_folder, fold, checkpoint, stored_orientation, _modality_map(modality_map))
    check = _source_check(parity_scan, spec, nnunet_reference(results_folder, spec, fold, checkpoint), PREDICTOR)
    manifest = package(net, out, spec, precisions=precisions, overwrite=overwrite, parity_input=check)
    _echo_result(out, manifest)


@click.command("from-monai-bundle")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@_parity_option
@_write_options
@refusing
def from_monai_bundle(bundle_dir, out, parity_scan, precisions, overwrite):
    """Package a MONAI bundle: configs/inference.json (MONAI's ConfigParser), network_def,
    models/model.pt; its transforms and inferer mapped to the manifest, or refused by name.

    \b
    Example:
        python -m export from-monai-bundle brats_mri_segmentation models/brats-monai --precision fp16
    """
    from .byom import package
    from .monai_bundle import BUNDLE_INFERER, bundle_reference, load_bundle

    net, spec = load_bundle(bundle_dir)
    check = _source_check(parity_scan, spec, bundle_reference(bundle_dir, net, spec), BUNDLE_INFERER)
    manifest = package(net, out, spec, precisions=precisions, overwrite=overwrite, parity_input=check)
    _echo_result(out, manifest)


def _import_help(backend: str) -> str:
    suffix = "onnx" if backend == "onnx" else "tflite"
    checks = "onnx.checker, no external data, " if backend == "onnx" else ""
    return f"""Wrap a .{suffix} exported elsewhere as a model folder ({checks}tensors checked
    against the spec, sha256 pinned, fp16 derived with --precision fp16, int8 with --precision
    int8 and --calibration scans, each run against the original).

    \b
    Examples:
        python -m export import-{backend} model.{suffix} models/mine --spec spec.json --precision fp16
        python -m export import-{backend} model.{suffix} models/mine8 --spec spec.json --precision int8 \\
            --calibration scans/case1 --calibration scans/case2
    """


def _import_command(backend: str):
    @click.command(f"import-{backend}", help=_import_help(backend))
    @click.argument("model", type=click.Path(dir_okay=False))
    @click.argument("out", type=click.Path(file_okay=False))
    @_spec_option
    @click.option("--calibration", "calibration", multiple=True, type=click.Path(exists=True),
                  help="a scan for int8 calibration (case folder, 4D NIfTI or DICOM folder), read and prepared "
                       "as edge-infer run does; repeat it")
    @_write_options
    @refusing
    def command(model, out, spec, calibration, precisions, overwrite):
        from .import_onnx import import_artifact

        manifest = import_artifact(model, out, spec, backend, precisions=precisions, overwrite=overwrite,
                                   calibration=calibration)
        _echo_result(out, manifest)

    return command


import_onnx = _import_command("onnx")
import_tflite = _import_command("tflite")
COMMANDS = (from_torch, from_nnunet, from_monai_bundle, import_onnx, import_tflite)
