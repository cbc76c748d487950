"""MODEL_CARD.md for an exported model folder, written from its manifest (nothing typed by hand)."""

from __future__ import annotations

import json
from pathlib import Path

from edge_infer.manifest import Manifest


def _dice_row(d: dict) -> str:
    return " / ".join(f"{d[r]:.3f}" for r in ("WT", "TC", "ET"))


def render_model_card(m: Manifest) -> str:
    prov = m.provenance
    tr, val, ver = prov.get("training", {}), prov.get("validation", {}), prov.get("verification", {})
    sweep = val.get("threshold_sweep", {})
    lines = [
        f"# Model card: `{m.name}` {m.version}", "",
        f"**Intended use:** {m.intended_use}.", "",
        "Trained only on synthetic phantoms; it has never seen a real patient scan. Its outputs have no "
        "clinical meaning and must not inform any diagnosis or treatment.", "",
        "## Model", "",
        f"- architecture: `{prov.get('architecture')}` {json.dumps(prov.get('model_config', {}))}",
        f"- {m.dims}D, input {m.layout} {list(m.modalities)}, normalisation `{m.normalization}`, "
        f"slices along axis {m.slice_axis} of the RAS volume, tile {list(m.tile) if m.tile else 'dynamic'}, "
        f"divisible by {m.divisible_by}",
        f"- outputs: {list(m.channels)} logits ({m.activation}); labels "
        + ", ".join(f"{lb.region} -> {lb.value} ({lb.name})" for lb in m.labels),
        f"- parameters: {m.parameters:,}; MACs per {'slice' if m.dims == 2 else 'patch'} "
        f"{prov.get('macs_counted_at')}: {m.macs / 1e9:.2f} G",
        "", "| file | backend | precision | bytes | sha256 |", "|---|---|---|---|---|",
    ]
    lines += [f"| {a.file} | {a.backend} | {a.precision} | {a.bytes:,} | `{a.sha256[:16]}...` |" for a in m.artifacts]
    lines += [""] + [f"- not made: {k} ({why})" for k, why in prov["not_made"].items()] if prov.get("not_made") else []
    lines += ["", "## Training data and settings", "", f"- data: {tr.get('data', 'n/a')}",
              f"- loss: {tr.get('loss', 'n/a')}; optimizer: {tr.get('optimizer', 'n/a')}",
              f"- steps {tr.get('steps')}, batch {tr.get('batch')}, crops {tr.get('tile')}, lr {tr.get('lr')} "
              f"(x{tr.get('lr_gamma')} every {tr.get('lr_step')} steps), tumour-biased sampling p={tr.get('tumour_p')}, "
              f"left-right flips, seed {tr.get('seed')}, {tr.get('threads')} CPU threads, {tr.get('seconds')} s",
              f"- reproduce: `{prov.get('command', 'n/a')}`", "",
              "## Validation (held-out phantoms)", "",
              f"Seeds {val.get('seeds')}, mean per-case 3D Dice on the slab around the tumour.", "",
              f"- threshold sweep {sweep.get('grid', [None])[0]}..{sweep.get('grid', [None])[-1]}: best global "
              f"threshold **{sweep.get('global')}** (used), Dice WT/TC/ET {_dice_row(sweep['global_dice']) if sweep else 'n/a'}",
              f"- best per-region thresholds {sweep.get('per_region')}: Dice WT/TC/ET "
              f"{_dice_row(sweep['per_region_dice']) if sweep else 'n/a'}", ""]
    if ver:
        lines += ["## Export parity (through the edge-infer runtime)", "",
                  f"Cases {ver.get('cases')}; PyTorch Dice WT/TC/ET vs truth {_dice_row(ver['pytorch_dice_vs_truth'])}.", "",
                  "| artifact | reference | max abs logit diff | Dice vs reference (WT/TC/ET) | Dice vs truth | passed |",
                  "|---|---|---|---|---|---|"]
        for k, v in ver["artifacts"].items():
            lines.append(f"| {k} | {v['reference']} | {v['max_abs_logit_diff']:.2e} | {_dice_row(v['dice_vs_reference'])} "
                         f"| {_dice_row(v['dice_vs_truth'])} | {v['passed']} |")
        lines.append("")
    lines += ["## Limitations", "",
              "- Phantom anatomy and contrast are simplified; Dice on phantoms says nothing about real scans.",
              "- Retrain on real data (`python -m export train --data BRATS_FOLDER ...`) before any research use on "
              "real images.", ""]
    return "\n".join(lines)


def parity_section(parity: dict) -> list[str]:
    """Markdown lines of ``provenance.parity``: the figures the export measured against the source."""
    vol = parity["volume"]
    what = ", ".join(f"{k} {v}" for k, v in vol.items() if k != "kind")
    names = list(next(iter(parity["artifacts"].values()))["dice"])
    lines = ["## Parity with the source (through the edge-infer runtime)", "",
             f"Reference: {parity['reference']}; volume: {vol['kind']} ({what}); Dice per {parity['unit']}"
             + (f", {parity['left_out_voxels']} voxels left out (reference rounding)"
                if parity["left_out_voxels"] else "")
             + f"; largest probability difference against {parity['probability_reference']}.", "",
             f"| artifact | {' | '.join(f'Dice {n}' for n in names)} | max prob diff | min Dice | passed |",
             "|---|" + "---|" * (len(names) + 3)]
    for key, row in parity["artifacts"].items():
        dice = " | ".join(f"{row['dice'][n]:.4f} ({row['reference_voxels'][n]:,} vox)" for n in names)
        lines.append(f"| {key} | {dice} | {row['max_prob_diff']:.2e} | {row['min_dice']} | {row['passed']} |")
    return lines + [""]


def render_import_card(m: Manifest) -> str:
    """The model card of a model brought from elsewhere (``export.package`` and the import commands)."""
    prov = m.provenance
    source = {k: v for k, v in prov.items() if k not in ("verification", "parity", "not_made")}
    lines = [f"# Model card: `{m.name}` {m.version}", "", f"**Intended use:** {m.intended_use or 'not stated'}.", "",
             "Imported into edge-infer; trained elsewhere. Validate it on your own data before any use.", "",
             "## Model", "", f"- source: {json.dumps(source, sort_keys=True)}",
             f"- {m.dims}D, input {m.layout} {list(m.modalities)}, normalisation `{m.normalization}`, spacing "
             f"{list(m.spacing_mm)} mm, orientation {m.orientation}, tile {list(m.tile) if m.tile else 'dynamic'}",
             f"- outputs: {list(m.channels)} ({m.activation}); labels "
             + ", ".join(f"{lb.region} -> {lb.value} ({lb.name})" for lb in m.labels),
             f"- parameters: {m.parameters:,}; MACs per tile: {m.macs / 1e9:.3f} G", "",
             "| file | backend | precision | bytes | sha256 |", "|---|---|---|---|---|"]
    lines += [f"| {a.file} | {a.backend} | {a.precision} | {a.bytes:,} | `{a.sha256[:16]}...` |" for a in m.artifacts]
    lines += [f"- not made: {k} ({why})" for k, why in prov.get("not_made", {}).items()] + [""]
    return "\n".join(lines + (parity_section(prov["parity"]) if "parity" in prov else []))


def write_model_card(folder: Path, manifest: Manifest) -> Path:
    """``MODEL_CARD.md`` of ``folder``: the zoo card for a model trained here, else the import card."""
    path = Path(folder) / "MODEL_CARD.md"
    render = render_model_card if "training" in manifest.provenance else render_import_card
    path.write_text(render(manifest), encoding="utf-8")
    return path
