"""The default model baked into an image: its name, version and sha256s, for OCI labels.

Standard library only (it runs in the image's build stage before any wheel is installed).

    python3 docker/model_meta.py [MODELS_DIR]                 # JSON: name, version, sha256s
    python3 docker/model_meta.py [MODELS_DIR] --build-args    # --build-arg lines for build.sh
    python3 docker/model_meta.py MODELS_DIR --expect SHA256 [--require-backend tflite]
                                                  # fail unless model.json has that sha256
                                                  # (and an artifact for one of the backends)
    python3 docker/model_meta.py MODELS_DIR --backends        # the artifacts' backends

``MODELS_DIR`` is the package's ``edge_infer/models`` folder (default: this checkout's). The
default model is the folder ``default``, or ``placeholder`` while no trained model is bundled
(the rule of ``edge_infer.model.resolve_model``). Every artifact's sha256 is recomputed and
checked against the manifest, so a label can never name a file the image does not hold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_NAMES = ("default", "placeholder")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_model_dir(models: Path) -> Path:
    for name in DEFAULT_NAMES:
        if (models / name / "model.json").is_file():
            return models / name
    raise SystemExit(f"model_meta: no default model in {models} (looked for {', '.join(DEFAULT_NAMES)}/model.json)")


def meta(models: Path) -> dict:
    folder = default_model_dir(models)
    manifest = json.loads((folder / "model.json").read_text())
    artifacts, backends = {}, []
    for art in manifest.get("artifacts", []):
        backends.append(art["backend"])
        got = sha256(folder / art["file"])
        if got != art["sha256"]:
            raise SystemExit(f"model_meta: {folder / art['file']} has sha256 {got}, the manifest says {art['sha256']}")
        artifacts[art["file"]] = got
    return {
        "folder": folder.name,
        "name": manifest["name"],
        "version": manifest["version"],
        "placeholder": bool(manifest.get("placeholder", False)),
        "manifest_sha256": sha256(folder / "model.json"),
        "artifacts": artifacts,
        "backends": backends,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="?", type=Path, default=REPO / "edge_infer" / "models")
    ap.add_argument("--build-args", action="store_true", help="print docker --build-arg words")
    ap.add_argument("--expect", metavar="SHA256", help="fail unless model.json has this sha256")
    ap.add_argument("--backends", action="store_true", help="print the artifacts' backends")
    ap.add_argument("--require-backend", metavar="B1,B2", default=None,
                    help="with --expect: fail unless an artifact runs on one of these backends")
    a = ap.parse_args(argv)
    m = meta(a.models)
    if a.expect is not None:
        wanted = a.require_backend.split(",") if a.require_backend else None
        if wanted and not set(wanted) & set(m["backends"]):
            print(f"model_meta: the default model {m['name']} has artifacts for {', '.join(m['backends'])} only; "
                  f"this image runs {', '.join(wanted)}: bundle a model with such an artifact", file=sys.stderr)
            return 1
        if a.expect != m["manifest_sha256"]:
            print(f"model_meta: the image would bake model.json sha256 {m['manifest_sha256']} "
                  f"but its label says {a.expect or '(empty)'}; build with docker/build.sh", file=sys.stderr)
            return 1
        print(f"baked model {m['name']} {m['version']}: model.json sha256 {m['manifest_sha256']} (matches the label)")
        return 0
    if a.backends:
        print(" ".join(m["backends"]))
        return 0
    if a.build_args:
        arts = ",".join(f"{k}={v}" for k, v in m["artifacts"].items())
        for key, val in (("MODEL_NAME", m["name"]), ("MODEL_VERSION", m["version"]),
                         ("MODEL_SHA256", m["manifest_sha256"]), ("MODEL_ARTIFACTS", arts)):
            print(f"{key}={val}")
        return 0
    print(json.dumps(m, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
