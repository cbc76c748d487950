"""The ``byom`` benchmark's framework peers, each run in a fresh process as its users run it:
``python -m bench.byom_peers NAME --source DIR --out DIR --threads N FILE...``.

- ``nnunet``: ``nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
  perform_everything_on_device=False, device=cpu)``, ``initialize_from_trained_model_folder``
  (fold 0, final checkpoint) and ``predict_from_files_sequential`` (no worker processes: the
  whole run is this process, so its ``VmHWM`` is the peak) on nnU-Net's raw input files.
- ``monai-bundle``: the bundle's own ``configs/inference.json`` through MONAI's ``ConfigParser``:
  its ``network_def`` with ``models/model.pt``, its preprocessing on the modality files, its
  inferer and postprocessing; the three sigmoid channels (TC, WT, ET) painted WT 2, TC 1, ET 4.

As in :mod:`bench.peers`, the libraries are imported first (not timed); the clock runs from
the model folder and the input files to the mask written on disk. Prints one JSON line with
``seconds``, ``peak_rss_mb`` (``VmHWM``) and ``mask``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .peers import emit


def nnunet(a) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: F401  (found by name at load)

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                           perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                           verbose_preprocessing=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(a.source), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    a.out.mkdir(parents=True, exist_ok=True)
    pred.predict_from_files_sequential([[str(f) for f in a.files]], [str(a.out / "mask")], save_probabilities=False,
                                       overwrite=True)
    return {"seconds": time.perf_counter() - t0, "mask": str(a.out / "mask.nii.gz")}


def monai_bundle(a) -> dict:
    import nibabel as nib
    import numpy as np
    import torch
    from monai.bundle import ConfigParser

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    parser = ConfigParser()
    parser.read_config(str(a.source / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(str(a.source / "models" / "model.pt"), weights_only=True))
    data = parser.get_parsed_content("preprocessing")({"image": [str(f) for f in a.files]})
    with torch.inference_mode():
        pred = parser.get_parsed_content("inferer")(data["image"][None], net.eval())[0]
        out = np.asarray(parser.get_parsed_content("postprocessing")({"pred": pred})["pred"]).astype(bool)
    labels = np.zeros(out.shape[1:], np.uint8)
    labels[out[1]], labels[out[0]], labels[out[2]] = 2, 1, 4          # WT -> 2, then TC -> 1, then ET -> 4
    a.out.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, nib.load(str(a.files[0])).affine), str(a.out / "mask.nii.gz"))
    return {"seconds": time.perf_counter() - t0, "mask": str(a.out / "mask.nii.gz")}


PEERS = {"nnunet": nnunet, "monai-bundle": monai_bundle}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.byom_peers")
    ap.add_argument("peer", choices=sorted(PEERS))
    ap.add_argument("files", type=Path, nargs="+", help="the input images, in the model's channel order")
    ap.add_argument("--source", type=Path, required=True, help="the nnU-Net results folder or the MONAI bundle")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    emit(PEERS[a.peer](a))


if __name__ == "__main__":
    main()
