"""``byom`` (issue 13): imported models run by edge-infer against their own frameworks.

The same nnU-Net v2 model (3d_fullres) run by ``nnUNetPredictor`` on CPU (step 0.5, Gaussian,
mirroring off) and, exported by ``from-nnunet``, by edge-infer (``run_case``, what
``edge-infer run`` calls; onnxruntime fp32); the same for a MONAI bundle against its own
inferer (``from-monai-bundle``). One phantom volume for all, the same threads, each run a fresh
process, the two tools alternating, medians of ``ctx.reps`` runs. Dice per label of edge-infer's
mask against the framework's own mask. Goals: edge-infer >= 3x faster than nnU-Net (>= 2x
than the MONAI bundle) end to end, peak RSS <= 1/3 of the framework's, Dice >= 0.99.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import byom_models, plots
from .common import Context, Result, alternate, dice, median, peer, read_mask, run_python, table
from .sidebyside import installed

#: a brain cropped near its nonzero box; at 160x192x144 the bundle's own inferer alone takes
#: minutes a run on 2 cores, and 3 rounds would pass the suite's 10-minute budget
FULL_SHAPE = (128, 128, 96)
QUICK_SHAPE = (48, 44, 40)
DICE_TOL = 0.99
RSS_FRACTION = 1 / 3
EDGE = "edge-infer"


@dataclass(frozen=True)
class Pair:
    """One comparison: the framework peer (:mod:`bench.byom_peers`), the module it needs, the
    export command that makes edge-infer's model, the speed-up goal, the nnU-Net configuration."""

    peer: str
    needs: str
    command: str
    speedup: float
    configuration: str | None = None

    @property
    def slug(self) -> str:
        return self.peer + (f"-{self.configuration}" if self.configuration else "")


PAIRS = {"nnU-Net 3d_fullres": Pair("nnunet", "nnunetv2", "from-nnunet", 3.0, "3d_fullres"),
         "nnU-Net 2d": Pair("nnunet", "nnunetv2", "from-nnunet", 3.0, "2d"),
         "MONAI bundle": Pair("monai-bundle", "monai", "from-monai-bundle", 2.0)}
#: training steps of the MONAI bundle builder
BUNDLE_STEPS = 30


def label_dice(ref: np.ndarray, got: np.ndarray, values) -> dict[str, float]:
    """Dice per label value (keys are the values as strings) of two label maps, and their minimum."""
    out = {str(v): round(dice(ref == v, got == v), 6) for v in values}
    out["min"] = min(out.values())
    return out


def label_counts(mask: np.ndarray, values) -> dict[str, int]:
    return {str(v): int((mask == v).sum()) for v in values}


def per_label(d: dict | None) -> str:
    return " / ".join(f"{k} {v:.4f}" for k, v in d.items() if k != "min") if d else "-"


def sources(ctx: Context, res: Result) -> dict[str, tuple[Path, Path]]:
    """comparison -> (framework source folder, edge-infer model folder), built or from the cache,
    for each comparison whose framework is installed and whose model the fixtures can build."""
    cache = ctx.cache / "byom"
    names = installed({n: p.needs for n, p in PAIRS.items()}, res, "pip install 'edge-infer[import]'")
    out = {}
    for name in names:
        pair = PAIRS[name]
        if pair.configuration and pair.configuration not in byom_models.nnunet_configurations():
            res.notes.append(f"{name}: not measured: tests/export/nnunet_fixture.py trains "
                             f"{', '.join(byom_models.nnunet_configurations())} only in this tree")
            continue
        src = (byom_models.nnunet_results(cache, pair.configuration) if pair.configuration
               else byom_models.monai_bundle(cache, BUNDLE_STEPS))
        out[name] = (src, byom_models.exported(src, pair.command, cache / f"model-{pair.slug}-{byom_models.VERSION}",
                                               ctx.threads))
    return out


def measure(ctx: Context, name: str, src: Path, model: Path, inputs: tuple[Path, list[Path]]) -> dict[str, list[dict]]:
    """Fresh-process runs of edge-infer and the framework, alternating, ``ctx.reps`` rounds."""
    pair = PAIRS[name]
    case, nnunet_files = inputs
    files = nnunet_files if pair.configuration else [case / f"{case.name}_{m}.nii.gz" for m in byom_models.MODALITIES]
    out = ctx.work("byom") / pair.slug

    def once(tool: str, rep: int) -> dict:
        if tool == EDGE:
            return peer("edge-infer", case=case, model=model, out=out / "edge", threads=ctx.threads, backend="onnx")
        return run_python(["-m", "bench.byom_peers", pair.peer, *map(str, files), "--source", str(src),
                           "--out", str(out / pair.peer), "--threads", str(ctx.threads)])

    return alternate([EDGE, pair.peer], ctx.reps, once)


def rows_for(name: str, runs: dict[str, list[dict]], values, res: Result) -> list[dict]:
    """One row per tool: medians, mask voxels per label, and edge-infer's Dice against the framework."""
    kind = PAIRS[name].peer
    ok = {t: [r for r in rs if "error" not in r] for t, rs in runs.items()}
    for tool, rs in ok.items():
        if not rs:
            res.notes.append(f"{name}, {tool}: failed: {runs[tool][0]['error']}")
    if not all(ok.values()):
        return []
    masks = {t: read_mask(rs[-1]["mask"]) for t, rs in ok.items()}
    rows = []
    for tool, rs in ok.items():
        row = {"comparison": name, "tool": tool, "seconds": median([r["seconds"] for r in rs]),
               "process_wall_s": median([r["process_wall_s"] for r in rs]),
               "peak_rss_mb": median([r["peak_rss_mb"] for r in rs]), "runs": len(rs),
               "seconds_all": [round(r["seconds"], 3) for r in rs], "mask_voxels": label_counts(masks[tool], values)}
        if tool == EDGE:
            row.update(dice_vs=kind, dice=label_dice(masks[kind], masks[EDGE], values), tolerance=DICE_TOL)
            row["agree"] = row["dice"]["min"] >= DICE_TOL
        rows.append(row)
    return rows


def goals(name: str, rows: list[dict], res: Result) -> None:
    edge, fw = rows[0], rows[1]
    speed, rss = fw["seconds"] / edge["seconds"], edge["peak_rss_mb"] / fw["peak_rss_mb"]
    edge.update(speedup=speed, rss_fraction=rss, wall_speedup=fw["process_wall_s"] / edge["process_wall_s"])
    target = PAIRS[name].speedup
    res.goal(f"{name}: edge-infer speed-up end to end", speed, f">= {target:g}x", speed >= target)
    res.goal(f"{name}: edge-infer peak RSS / framework's", rss, f"<= {RSS_FRACTION:.3g}", rss <= RSS_FRACTION)
    res.goal(f"{name}: mask Dice (min over labels) vs the framework's", edge["dice"]["min"], f">= {DICE_TOL}",
             edge["agree"])
    empty = [f"{r['tool']} label {v}" for r in rows for v, n in r["mask_voxels"].items() if n == 0]
    if empty:
        res.notes.append(f"{name}: empty masks ({', '.join(empty)}): Dice says nothing there")


def run(ctx: Context) -> Result:
    shape = QUICK_SHAPE if ctx.quick else FULL_SHAPE
    res = Result("byom", f"Bring your own model ({'x'.join(map(str, shape))}, 4 channels): edge-infer against "
                 "nnU-Net's predictor and a MONAI bundle's inferer",
                 "python -m bench byom" + (" --quick" if ctx.quick else ""))
    inputs = byom_models.volume(ctx.cache / "byom", shape)
    for name, (src, model) in sources(ctx, res).items():
        values = [lb["value"] for lb in json.loads((model / "model.json").read_text())["output"]["labels"]]
        rows = rows_for(name, measure(ctx, name, src, model, inputs), values, res)
        if rows:
            goals(name, rows, res)
            res.rows.extend(rows)
    res.tables.append(table(["comparison", "tool", "end to end s", "process wall s", "peak RSS MB", "x faster",
                             "x faster (process wall)", "RSS / framework", "Dice vs framework (per label)",
                             "mask voxels (per label)"],
                            [[r["comparison"], r["tool"], r["seconds"], r["process_wall_s"], r["peak_rss_mb"],
                              r.get("speedup", "-"), r.get("wall_speedup", "-"), r.get("rss_fraction", "-"),
                              per_label(r.get("dice")),
                              " / ".join(f"{k}: {n}" for k, n in r["mask_voxels"].items())] for r in res.rows]))
    res.notes.append(f"medians of {ctx.reps} fresh-process runs per tool, alternating, {ctx.threads} threads each "
                     "(torch.set_num_threads; edge-infer --threads); 'end to end' = model folder and NIfTI files to "
                     "the mask on disk, inside the process (imports excluded; 'process wall' includes them)")
    res.notes.append("nnU-Net: nnUNetPredictor(tile_step_size=0.5, use_gaussian, no mirroring, CPU, "
                     "perform_everything_on_device=False) + predict_from_files_sequential (no worker processes); "
                     "MONAI: the bundle's inference.json via ConfigParser (preprocessing, SlidingWindowInferer, "
                     "postprocessing); edge-infer: the exported fp32 ONNX, onnxruntime")
    res.notes.append("models: nnU-Net's own planning on a 40x40x32 synthetic dataset, trained briefly in nnU-Net's "
                     "checkpoint format (tests/export/nnunet_fixture.py); a SegResNet bundle trained a few steps "
                     "(tests/export/monai_fixture.py); the volume is a phantom neither saw")
    fg = {f"{r['comparison']}: {r['tool']}": round(float(sum(r["mask_voxels"].values()) / np.prod(shape)), 4)
          for r in res.rows}
    res.notes.append(f"mask foreground fractions {fg}: the tiny models were trained on 40x40x32 cases and paint "
                     "much of a larger volume; the masks are not empty, so Dice compares the two tools' logits")
    res.params = {"shape": shape, "threads": ctx.threads, "reps": ctx.reps, "foreground_fraction": fg}
    try:
        res.params["load_avg_1min_at_end"] = os.getloadavg()[0]
    except OSError:
        pass
    res.plots.append(plots.bars(ctx.results / "byom.png", [f"{r['comparison']}: {r['tool']}" for r in res.rows],
                                [r["seconds"] for r in res.rows], "seconds end to end (median)",
                                f"imported models, {'x'.join(map(str, shape))}"))
    return res
