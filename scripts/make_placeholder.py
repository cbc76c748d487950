"""Build the runtime's placeholder model: a fixed-weight 3x3 convolution, NOT a trained model.

It stands in for the trained default model until the export stage produces one, so that
`edge-infer run` and `edge-infer demo` work offline. Each region is a smoothed, scaled copy
of one modality minus a bias (WT from FLAIR, TC from T2, ET from T1ce): its masks only
show that the pipeline runs. Its manifest says ``"placeholder": true`` and every report
warns about it.

Usage: python scripts/make_placeholder.py [OUT_FOLDER]   (default: edge_infer/models/placeholder)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from model_factory import write_model  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "edge_infer" / "models" / "placeholder"
    write_model(out, name="placeholder-rule-conv2d", overrides={
        "placeholder": True, "version": "0.0.1",
        "intended_use": "placeholder that exercises the pipeline; not a trained model; not for clinical use",
        "provenance": {"built_by": "scripts/make_placeholder.py", "weights": "fixed rule weights, no training"},
    })
    print(f"placeholder model written to {out}")
