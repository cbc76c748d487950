"""Board images (docker/): Dockerfiles, lock files, build script, ARM parity, old-numpy floor.

Fast tests read the files; tests marked slow reach PyPI (wheel resolution) or run the
emulated ARM roots (docker/verify-arm.sh), the Python 3.10 + numpy 1.24 floor
(docker/floor-check.sh) and the buildah image (docker/oci-image.sh).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
sys.path.insert(0, str(DOCKER))

import model_meta  # noqa: E402
import parity  # noqa: E402
import targets  # noqa: E402

IMAGE_TARGETS = [t.name for t in targets.TARGETS.values() if t.dockerfile]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# -- helpers ---------------------------------------------------------------------------------
def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{dockerfile.name} ends inside a continued line"
    return out


def stages(instrs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instrs:
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used here: the last matching rule wins."""
    state = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if p.startswith("**/"):
            hit = any(fnmatch.fnmatch(seg, p[3:]) for seg in parts)
        else:
            hit = any(fnmatch.fnmatch(pre, p) for pre in prefixes)
        if hit:
            state = not neg
    return state


def ignore_patterns(dockerfile: Path) -> list[str]:
    f = dockerfile.with_name(dockerfile.name + ".dockerignore")
    return [ln.strip() for ln in f.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def run(cmd, env=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, **kw)


def write_mask(path: Path, data: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data.astype(np.uint8), np.eye(4)), str(path))
    return path


# -- Dockerfiles ---------------------------------------------------------------------------------
@pytest.mark.parametrize("target", IMAGE_TARGETS)
class TestDockerfiles:
    def dockerfile(self, target) -> Path:
        return DOCKER / targets.get(target).dockerfile

    def test_parses_into_a_multi_stage_build(self, target):
        ins = instructions(self.dockerfile(target))
        known = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "LABEL", "HEALTHCHECK",
                 "ENTRYPOINT", "CMD", "EXPOSE", "VOLUME"}
        assert {w for w, _ in ins} <= known
        st = stages(ins)
        assert len(st) >= 2
        assert "--platform=$BUILDPLATFORM" in st[0][0][1], "the build stage must run natively (no emulation)"
        assert any(w == "COPY" and "--from=build" in a for w, a in st[-1])

    def test_final_stage_is_non_root_with_entrypoint_and_healthcheck(self, target):
        final = stages(instructions(self.dockerfile(target)))[-1]
        users = [a for w, a in final if w == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0")
        assert ("ENTRYPOINT", '["edge-infer"]') in final
        health = [a for w, a in final if w == "HEALTHCHECK"]
        assert health and '"edge-infer", "verify", "default"' in health[0]

    def test_oci_labels_name_version_and_model_sha256(self, target):
        labels = " ".join(a for w, a in instructions(self.dockerfile(target)) if w == "LABEL")
        for key in ("org.opencontainers.image.version", "org.opencontainers.image.revision",
                    "org.opencontainers.image.created", "io.edge-infer.model.sha256",
                    "io.edge-infer.model.version"):
            assert key + "=" in labels

    def test_copies_only_files_that_exist_and_are_in_the_context(self, target):
        df = self.dockerfile(target)
        patterns = ignore_patterns(df)
        sources = []
        for w, a in instructions(df):
            if w != "COPY" or "--from=" in a:
                continue
            words = [x for x in a.split() if not x.startswith("--")]
            sources += words[:-1]
        assert sources
        for src in sources:
            assert (ROOT / src).exists(), f"{df.name} copies {src}, which does not exist"
            assert not ignored(src.rstrip("/"), patterns), f"{df.name}.dockerignore leaves out {src}"
        assert ignored("tests/test_docker.py", patterns) and ignored("export/phantoms.py", patterns)

    def test_installs_its_own_lock_with_hashes_for_its_platform(self, target):
        text = " ".join(a for w, a in instructions(self.dockerfile(target)) if w in ("COPY", "RUN"))
        assert f"docker/constraints/{target}.txt" in text
        assert f"targets.py pip-args {target}" in text and "--require-hashes" in text

    def test_build_script_uses_the_registry_platform(self, target):
        r = run(["bash", str(DOCKER / "build.sh"), target, "--dry-run"])
        assert r.returncode == 0, r.stderr
        assert f"--platform {targets.get(target).docker_platform} " in r.stdout
        assert f"Dockerfile.{target} " in r.stdout


class TestJetson:
    def test_onnxruntime_comes_from_a_build_argument(self):
        ins = instructions(DOCKER / "Dockerfile.jetson")
        args = [a for w, a in ins if w == "ARG"]
        assert any(a.startswith("ORT_WHEEL") for a in args) and any(a.startswith("ORT_INDEX_URL") for a in args)
        assert stages(ins)[-1][0][1].startswith("${L4T_BASE}")
        assert any(a.startswith("L4T_BASE=nvcr.io/nvidia/l4t-jetpack:r36") for a in args)

    def test_runtime_prefers_tensorrt_then_cuda(self):
        from edge_infer.backends.onnx import PROVIDER_ORDER

        assert PROVIDER_ORDER[:2] == ("TensorrtExecutionProvider", "CUDAExecutionProvider")


# -- lock files ------------------------------------------------------------------------------
def runtime_requirements(extra: str | None = None):
    """The runtime's requirements, or those of one extra."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(d) for d in deps]


def marker_env(t) -> dict:
    return {"python_version": t.python, "python_full_version": t.python + ".0", "sys_platform": "linux",
            "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
            "platform_machine": t.machine}


def installs(t, extra: str | None = None) -> set[str]:
    """What `pip install edge-infer[extra]` asks for on target ``t`` (names only)."""
    return {targets.canonical(r.name) for r in runtime_requirements(extra)
            if r.marker is None or r.marker.evaluate(marker_env(t))}


class TestPipInstallOnTheBoard:
    """`pip install 'edge-infer[tflite]'` on each board asks only for wheels that exist there."""

    def test_32_bit_pi_gets_tflite_runtime_and_no_onnxruntime(self):
        t = targets.get("armv7")
        assert t.machine == "armv7l"
        assert "onnxruntime" not in installs(t)
        assert installs(t, "tflite") == {"tflite-runtime"}

    @pytest.mark.parametrize("name", ["arm64", "jetson"])
    def test_64_bit_boards_get_both_runtimes(self, name):
        t = targets.get(name)
        assert t.machine == "aarch64"
        assert "onnxruntime" in installs(t) and installs(t, "tflite") == {"ai-edge-litert"}


@pytest.mark.parametrize("target", list(targets.TARGETS))
class TestLockFiles:
    def test_every_line_is_pinned_with_a_hash(self, target):
        t = targets.get(target)
        text = t.lock_file.read_text()
        pins = targets.read_lock(t.lock_file)
        assert pins
        assert text.count("--hash=sha256:") == len(pins)

    def test_pins_every_runtime_dependency_in_range(self, target):
        from packaging.version import Version

        t = targets.get(target)
        pins = {**targets.read_lock(t.lock_file), **{targets.canonical(k): v for k, v in t.system.items()}}
        for req in runtime_requirements():
            if req.marker is not None and not req.marker.evaluate(marker_env(t)):
                continue  # e.g. onnxruntime on armv7: no wheel exists, the image runs TFLite only
            name = targets.canonical(req.name)
            if name == "onnxruntime" and t.external:
                continue  # jetson: the GPU build comes from ORT_WHEEL
            assert name in pins, f"{target} does not pin the runtime dependency {req}"
            assert req.specifier.contains(Version(pins[name]), prereleases=True), \
                f"{target} pins {name}=={pins[name]}, outside the runtime's {req}"

    def test_pins_every_requirement_of_the_extras_the_image_serves(self, target):
        from packaging.version import Version

        t = targets.get(target)
        pins = {**targets.read_lock(t.lock_file), **{targets.canonical(k): v for k, v in t.system.items()}}
        for extra in t.extras:
            for req in runtime_requirements(extra):
                if req.marker is not None and not req.marker.evaluate(marker_env(t)):
                    continue
                name = targets.canonical(req.name)
                assert name in pins, f"{target} serves the [{extra}] extra but does not pin {req}"
                assert req.specifier.contains(Version(pins[name]), prereleases=True), \
                    f"{target} pins {name}=={pins[name]}, outside the [{extra}] extra's {req}"

    def test_has_a_tflite_runtime_when_the_target_runs_tflite(self, target):
        t = targets.get(target)
        pins = targets.read_lock(t.lock_file)
        if "tflite" in t.backends:
            assert "ai-edge-litert" in pins or "tflite-runtime" in pins


class TestTargetRegistry:
    def test_the_node_requirements_are_the_dicom_extra(self):
        assert {targets.canonical(r) for r in targets.DICOM_NODE} == \
            {targets.canonical(r.name) for r in runtime_requirements("dicom")}

    def test_the_64_bit_images_serve_the_dicom_node(self):
        assert [n for n in IMAGE_TARGETS if "dicom" in targets.get(n).extras] == ["arm64", "jetson"]

    def test_unknown_target_lists_the_known_ones(self):
        with pytest.raises(KeyError, match="known targets: arm64, armv7, jetson"):
            targets.get("armv6")

    def test_build_script_knows_exactly_the_image_targets(self):
        text = (DOCKER / "build.sh").read_text()
        assert re.search(r"^KNOWN=\((.*)\)$", text, re.M).group(1).split() == IMAGE_TARGETS

    def test_pip_args_pin_platform_and_python(self):
        args = targets.get("armv7").pip_args()
        assert "--only-binary=:all:" in args and args[args.index("--python-version") + 1] == "3.11"
        assert "linux_armv7l" in args and "manylinux_2_36_armv7l" in args


@pytest.mark.slow
@pytest.mark.parametrize("target", list(targets.TARGETS))
class TestWheelResolution:
    def test_lock_resolves_to_binary_wheels_and_is_closed(self, target):
        """pip (PyPI only, --only-binary=:all:) finds a wheel for every pin on the target's
        platform and Python, and every dependency of a pinned wheel is pinned too."""
        from importlib.metadata import version; from packaging.version import Version  # noqa: E702
        assert Version(version("pip")) >= Version("24.2"), ("needs pip >= 24.2, which checks Requires-Python against "
            "--python-version (pypa/pip#12216): python -m pip install -U 'pip>=24.2', as scripts/test.sh does")
        problems = targets.check(targets.get(target))
        assert problems == []


# -- build script ----------------------------------------------------------------------------
def fake_docker(tmp_path: Path, buildx_ok: bool, platforms: str = "linux/amd64") -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = buildx ] && [ "$2" = version ]; then exit ' + ("0" if buildx_ok else "1") + "; fi\n"
        f'if [ "$1" = buildx ] && [ "$2" = ls ]; then echo "default docker {platforms}"; exit 0; fi\n'
        "exit 1\n")
    (bin_dir / "docker").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "BINFMT_DIR": str(tmp_path / "none")}


class TestBuildScript:
    def test_unknown_target_lists_the_known_ones(self):
        r = run(["bash", str(DOCKER / "build.sh"), "riscv64"])
        assert r.returncode == 2
        assert "unknown target 'riscv64'; known targets: arm64 armv7 jetson all" in r.stderr

    def test_no_target_is_an_error(self):
        r = run(["bash", str(DOCKER / "build.sh")])
        assert r.returncode == 2 and "name a target" in r.stderr

    def test_all_builds_every_target_with_version_and_model_labels(self):
        r = run(["bash", str(DOCKER / "build.sh"), "all", "--dry-run"])
        assert r.returncode == 0, r.stderr
        cmds = [ln for ln in r.stdout.splitlines() if ln.startswith("+ docker buildx build")]
        assert len(cmds) == len(IMAGE_TARGETS)
        meta = model_meta.meta(ROOT / "edge_infer" / "models")
        for cmd in cmds:
            assert f"--build-arg MODEL_SHA256={meta['manifest_sha256']}" in cmd
            assert "--build-arg VERSION=" in cmd and "--load" in cmd

    def test_ort_wheel_is_for_jetson_only(self):
        r = run(["bash", str(DOCKER / "build.sh"), "arm64", "--ort-wheel", "x.whl", "--dry-run"])
        assert r.returncode == 2 and "jetson target only" in r.stderr
        r = run(["bash", str(DOCKER / "build.sh"), "jetson", "--ort-wheel", "docker/wheels/x.whl", "--dry-run"])
        assert r.returncode == 0 and "--build-arg ORT_WHEEL=docker/wheels/x.whl" in r.stdout

    def test_missing_buildx_names_the_install_command(self, tmp_path):
        r = run(["bash", str(DOCKER / "build.sh"), "arm64"], env=fake_docker(tmp_path, buildx_ok=False))
        assert r.returncode == 2
        assert "docker buildx is missing; install it with: apt-get install docker-buildx-plugin" in r.stderr

    def test_missing_qemu_names_the_install_command(self, tmp_path):
        if os.uname().machine in ("aarch64", "arm64"):
            pytest.skip("arm64 builds natively here")
        r = run(["bash", str(DOCKER / "build.sh"), "armv7"], env=fake_docker(tmp_path, buildx_ok=True))
        assert r.returncode == 2
        assert "needs qemu binfmt handlers" in r.stderr and "apt-get install qemu-user-static binfmt-support" in r.stderr


# -- ARM parity script: bad input --------------------------------------------------------------
class TestVerifyArmScript:
    def test_unknown_target_lists_the_known_ones(self):
        r = run(["bash", str(DOCKER / "verify-arm.sh"), "mips"])
        assert r.returncode == 2 and "known targets: arm64 armv7 all" in r.stderr

    def test_unknown_backend_lists_the_known_ones(self):
        r = run(["bash", str(DOCKER / "verify-arm.sh"), "arm64", "--backend", "tensorrt"])
        assert r.returncode == 2 and "known backends: tflite onnx" in r.stderr

    @pytest.mark.skipif(not IS_ROOT or not shutil.which("debootstrap"), reason="needs root and debootstrap")
    def test_missing_qemu_names_the_install_command(self):
        env = {**os.environ, "PYTHON": sys.executable, "QEMU_ARM": "qemu-arm-static-not-installed"}
        r = run(["bash", str(DOCKER / "verify-arm.sh"), "armv7"], env=env)
        assert r.returncode == 2
        assert "install it with: apt-get update && apt-get install -y qemu-user-static" in r.stderr


# -- parity comparison -------------------------------------------------------------------------
class TestParityCompare:
    @pytest.fixture
    def masks(self, tmp_path):
        ref = np.zeros((32, 32, 4), np.uint8)
        ref[8:24, 8:24] = 2
        ref[12:20, 12:20] = 1
        return tmp_path, ref

    def test_identical_masks_pass(self, masks, capsys):
        d, ref = masks
        a, b = write_mask(d / "a.nii.gz", ref), write_mask(d / "b.nii.gz", ref)
        assert parity.main(["compare", str(a), str(b)]) == 0
        assert "identical labels" in capsys.readouterr().out

    def test_mismatch_fails_with_dice_and_differing_voxels(self, masks, capsys):
        d, ref = masks
        other = ref.copy()
        other[8:12, 8:24] = 0  # 4 x 16 x 4 = 256 voxels lose label 2
        a, b = write_mask(d / "a.nii.gz", ref), write_mask(d / "b.nii.gz", other)
        assert parity.main(["compare", str(a), str(b), "--json", str(d / "r.json")]) == 1
        out = capsys.readouterr().out
        assert "PARITY FAILED" in out and "256 of 4096 voxels differ" in out and "Dice 1 1.000000, 2 0." in out
        assert json.loads((d / "r.json").read_text())["differing_voxels"] == 256

    def test_a_few_voxels_pass_within_the_dice_tolerance(self, masks, capsys):
        d, ref = masks
        big = np.zeros((64, 64, 64), np.uint8)
        big[4:60, 4:60, 4:60] = 2
        other = big.copy()
        other[4, 4, 4:10] = 0
        a, b = write_mask(d / "a.nii.gz", big), write_mask(d / "b.nii.gz", other)
        assert parity.main(["compare", str(a), str(b)]) == 0
        out = capsys.readouterr().out
        assert "within tolerance" in out and "6 of 262144 voxels differ" in out

    def test_shape_mismatch_fails(self, masks, capsys):
        d, ref = masks
        a, b = write_mask(d / "a.nii.gz", ref), write_mask(d / "b.nii.gz", ref[:, :, :2])
        assert parity.main(["compare", str(a), str(b)]) == 1
        assert "shapes differ" in capsys.readouterr().out

    def test_make_sample_is_small_and_four_modalities(self, tmp_path):
        import nibabel as nib

        parity.make_sample(tmp_path, slices=3, size=40)
        shapes = {m: nib.load(str(tmp_path / f"parity_{m}.nii.gz")).shape for m in parity.MODALITIES}
        assert set(shapes.values()) == {(40, 40, 3)}


# -- model labels ----------------------------------------------------------------------------
class TestModelMeta:
    def test_labels_the_model_the_runtime_runs_by_default(self):
        from edge_infer.model import resolve_model

        resolved = Path(resolve_model("default"))
        folder = resolved if resolved.is_dir() else resolved.parent
        assert model_meta.default_model_dir(ROOT / "edge_infer" / "models") == folder

    def test_expect_fails_on_a_different_sha256(self, capsys):
        assert model_meta.main([str(ROOT / "edge_infer" / "models"), "--expect", "0" * 64]) == 1
        assert "build with docker/build.sh" in capsys.readouterr().err

    def test_a_tampered_artifact_is_refused(self, tmp_path):
        src = model_meta.default_model_dir(ROOT / "edge_infer" / "models")
        dst = tmp_path / "models" / src.name
        shutil.copytree(src, dst)
        art = json.loads((dst / "model.json").read_text())["artifacts"][0]["file"]
        with open(dst / art, "ab") as f:
            f.write(b"\0")
        with pytest.raises(SystemExit, match="the manifest says"):
            model_meta.meta(tmp_path / "models")


# -- the slow end-to-end checks ------------------------------------------------------------------
@pytest.fixture(scope="session")
def tflite_model_args(tmp_path_factory) -> list[str]:
    """`--model FOLDER` while the bundled default model has no TFLite artifact, else []."""
    from edge_infer.manifest import load_manifest
    from edge_infer.model import resolve_model

    if any(a.backend == "tflite" for a in load_manifest(resolve_model("default")).artifacts):
        return []
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    import onnx
    from model_factory import write_model

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(4, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x):
            return self.c2(torch.relu(self.c1(x)))

    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(1, 4, 64, 64)
    out = tmp_path_factory.mktemp("tflite-model")
    litert_torch.convert(net, (x,)).export(str(out / "model.tflite"))
    torch.onnx.export(net, (x,), str(out / "tmp.onnx"), dynamo=False, opset_version=17)
    om = onnx.load(str(out / "tmp.onnx"))
    (out / "tmp.onnx").unlink()
    write_model(out, om, tile=(64, 64), name="test-tflite-conv",
                extra_artifacts=[(Path("model.tflite"), "tflite", "fp32")])
    return ["--model", str(out)]


def script_env() -> dict:
    return {**os.environ, "PYTHON": sys.executable}


@pytest.mark.slow
@pytest.mark.skipif(not IS_ROOT, reason="debootstrap and the private mount namespace need root")
class TestArmParity:
    def test_arm64_and_armv7_tflite_masks_match_x86(self, tflite_model_args):
        """The real `edge-infer run` under qemu (arm64: LiteRT 2.3 with numpy 2; armv7:
        tflite-runtime 2.14 with Debian's numpy 1.24) gives the x86_64 mask, label for label.

        The CI profile: TFLite only, 2 slices, no healthcheck (about 6 minutes from a cold
        cache on 2 busy cores; `docker/verify-arm.sh all` adds ONNX on arm64 and the
        healthcheck, see docker/README.md)."""
        r = run(["bash", str(DOCKER / "verify-arm.sh"), "all", "--backend", "tflite", "--slices", "2",
                 "--no-healthcheck", *tflite_model_args], env=script_env(), timeout=3000)
        assert r.returncode == 0, r.stdout + r.stderr[-4000:]
        for line in ("parity ok (arm64/tflite", "parity ok (armv7/tflite", "verify-arm: PASSED"):
            assert line in r.stdout


@pytest.mark.slow
class TestOldNumpy:
    def test_python310_numpy124_masks_match(self, tflite_model_args):
        """The runtime on Python 3.10 + numpy 1.24.4 (both backends) gives the masks of this
        Python and numpy."""
        r = run(["bash", str(DOCKER / "floor-check.sh"), *tflite_model_args], env=script_env(), timeout=1800)
        if r.returncode == 2 and "no Python 3.10 found" in r.stderr and os.environ.get("CI") != "true":
            pytest.skip(r.stderr.strip())
        assert r.returncode == 0, r.stdout + r.stderr[-4000:]
        assert "floor: 3.10" in r.stdout and "numpy 1.24.4" in r.stdout
        assert r.stdout.count("parity ok") == 2 and "floor-check: PASSED" in r.stdout


@pytest.mark.slow
@pytest.mark.skipif(not IS_ROOT or not shutil.which("buildah"), reason="needs root and Debian's buildah")
class TestOciImage:
    def test_arm64_image_fits_its_budget(self):
        r = run(["bash", str(DOCKER / "oci-image.sh"), "arm64"], env=script_env(), timeout=1800)
        assert r.returncode == 0, r.stdout + r.stderr[-4000:]
        assert "config architecture=arm64 variant=v8 os=linux" in r.stdout
        mb = float(re.search(r"image size: ([\d.]+) MB unpacked", r.stdout).group(1))
        assert mb < targets.get("arm64").size_budget_mb
