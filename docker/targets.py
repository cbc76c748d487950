"""The board targets that edge-infer ships images for: one registry, used by the build
script, the ARM parity check, the lock tool and the tests.

Each target pins its Python packages in ``docker/constraints/<target>.txt``, a lock file
with one ``name==version --hash=sha256:...`` line per wheel, installed with ``pip install
--no-deps --require-hashes --only-binary=:all:`` for that target's platform and Python.

Usage (stdlib only, any Python >= 3.9)::

    python3 docker/targets.py list                   # known targets, one a line
    python3 docker/targets.py show arm64             # one target's settings, as JSON
    python3 docker/targets.py pip-args arm64         # the --platform/--python-version args
    python3 docker/targets.py lock arm64             # re-resolve and rewrite the lock file
    python3 docker/targets.py check arm64            # the lock resolves to wheels, and is closed
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONSTRAINTS = HERE / "constraints"


def _manylinux(arch: str, max_glibc: int, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """pip platform tags for glibc 2.17 .. 2.``max_glibc`` (pip does not expand them itself)."""
    tags = [f"manylinux_2_{v}_{arch}" for v in range(max_glibc, 16, -1)]
    return (*tags, f"manylinux2014_{arch}", *extra)


@dataclass(frozen=True)
class Target:
    """One board family: where its image runs and which wheels it installs."""

    name: str
    description: str
    python: str                      # the Python (major.minor) of the image's OS
    pip_platforms: tuple[str, ...]   # wheel platform tags the OS accepts
    requirements: tuple[str, ...]    # top-level requirements the lock is resolved from
    docker_platform: str | None = None
    dockerfile: str | None = None
    size_budget_mb: int | None = None
    #: packages the OS provides (apt), with the version the lock is checked against
    system: dict[str, str] = field(default_factory=dict)
    #: packages that come from outside PyPI at build time (name -> where from)
    external: dict[str, str] = field(default_factory=dict)
    backends: tuple[str, ...] = ("onnx", "tflite")
    #: pyproject extras the image serves: every requirement of each is pinned in the lock
    extras: tuple[str, ...] = ()

    @property
    def lock_file(self) -> Path:
        return CONSTRAINTS / f"{self.name}.txt"

    @property
    def machine(self) -> str:
        """``platform.machine()`` on the target (what environment markers compare with)."""
        return self.pip_platforms[0].split("_", 3)[-1]

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def pip_args(self) -> list[str]:
        """Arguments that make pip pick wheels for this target instead of this machine."""
        args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python,
                "--abi", self.abi, "--abi", "abi3", "--abi", "none"]
        for tag in self.pip_platforms:
            args += ["--platform", tag]
        return args


#: the ``dicom`` extra (the DICOM node, ``edge-infer serve``), as in pyproject.toml
DICOM_NODE = ("highdicom", "pynetdicom", "prometheus-client", "dicomweb-client", "python-multipart")

# Debian 12 bookworm (Raspberry Pi OS bookworm): Python 3.11, glibc 2.36.
# Ubuntu 22.04 (L4T r36 / JetPack 6): Python 3.10, glibc 2.35.
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="arm64",
            description="Raspberry Pi 4/5, 64-bit Raspberry Pi OS / Debian 12 bookworm (aarch64)",
            python="3.11",
            pip_platforms=_manylinux("aarch64", 36),
            requirements=("numpy", "onnxruntime", "ai-edge-litert", "nibabel", "pydicom", "click", "tqdm",
                          *DICOM_NODE),
            docker_platform="linux/arm64",
            dockerfile="Dockerfile.arm64",
            # 400 MB before the node's `dicom` extra, which adds about 66 MB unpacked (highdicom's
            # standard tables 23 MB, Pillow 21 MB, pyjpegls 8 MB, pynetdicom 2 MB without tests)
            size_budget_mb=450,
            extras=("dicom",),
        ),
        Target(
            name="armv7",
            description="32-bit Raspberry Pi OS / Debian 12 bookworm armhf (armv7l): TFLite only",
            python="3.11",
            pip_platforms=(*_manylinux("armv7l", 36), "linux_armv7l"),
            # nibabel 5.4 needs numpy >= 1.25; Debian 12 ships numpy 1.24.2
            # resolved without dependencies (numpy is Debian's), so the closure is listed
            # no `dicom` extra (no node): highdicom and dicomweb-client need Pillow, which has no
            # armv7l wheel on PyPI
            requirements=("tflite-runtime", "nibabel<5.4", "pydicom", "click", "tqdm", "packaging",
                          "importlib-resources", "typing-extensions"),
            docker_platform="linux/arm/v7",
            dockerfile="Dockerfile.armv7",
            size_budget_mb=250,
            system={"numpy": "1.24.2"},
            backends=("tflite",),
        ),
        Target(
            name="jetson",
            description="NVIDIA Jetson Orin, L4T r36 / JetPack 6 (Ubuntu 22.04, CUDA 12, TensorRT 10)",
            python="3.10",
            pip_platforms=(*_manylinux("aarch64", 35), "linux_aarch64"),
            # the GPU onnxruntime wheel for JetPack 6 is built against numpy 1.x
            requirements=("numpy<2", "nibabel", "pydicom", "click", "tqdm", "tomli",
                          "packaging", "protobuf", "flatbuffers", *DICOM_NODE),
            docker_platform="linux/arm64",
            dockerfile="Dockerfile.jetson",
            external={"onnxruntime-gpu": "build argument ORT_WHEEL (+ ORT_INDEX_URL)"},
            backends=("onnx",),
            extras=("dicom",),
        ),
        Target(
            name="floor-py310",
            description="the oldest supported stack on x86_64: Python 3.10, numpy 1.24 (CI only)",
            python="3.10",
            pip_platforms=_manylinux("x86_64", 36),
            requirements=("numpy==1.24.4", "onnxruntime", "ai-edge-litert", "nibabel<5.4", "pydicom",
                          "click", "tqdm", "tomli"),
        ),
    )
}


def get(name: str) -> Target:
    """The target called ``name``; an unknown name lists the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None


# -- lock files ------------------------------------------------------------------------------
_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a lock file (continuation lines and comments skipped)."""
    pins = {}
    for raw in path.read_text().splitlines():
        m = _LINE.match(raw.strip())
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def _pip_env() -> dict[str, str]:
    """pip as a Docker build sees it: PyPI only, no machine-wide config or local mirrors."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def resolve(target: Target, requirements: list[str], no_deps: bool, python: str = sys.executable) -> list[dict]:
    """What pip would install for ``target`` (metadata only, no wheel download)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        req = Path(tmp) / "req.txt"
        req.write_text("\n".join(requirements) + "\n")
        cmd = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--target", str(Path(tmp) / "t"), "--report", str(report), "-r", str(req), *target.pip_args()]
        if no_deps:
            cmd.append("--no-deps")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_pip_env())
        if proc.returncode != 0:
            err = "\n".join(line for line in proc.stderr.splitlines() if "WARNING" not in line)
            raise RuntimeError(
                f"pip cannot resolve the {target.name} requirements to wheels for "
                f"{target.abi} on {target.pip_platforms[0]}:\n{err.strip()}"
            )
        return json.loads(report.read_text())["install"]


def lock(target: Target) -> Path:
    """Re-resolve ``target.requirements`` and write the lock file, with sha256 per wheel."""
    # a target with OS-provided packages resolves without dependencies (pip would look
    # for a wheel of, e.g., numpy that the platform lacks); `check` proves it closed
    items = resolve(target, list(target.requirements), no_deps=bool(target.system))
    lines = [f"# edge-infer runtime lock for target {target.name}: {target.description}",
             f"# wheels for cp{target.abi[2:]} on {target.pip_platforms[0]} (and older tags);"
             f" regenerate with: python3 docker/targets.py lock {target.name}"]
    for name, ver in target.system.items():
        lines.append(f"# {name}=={ver} comes from the OS (apt), not from this file")
    for name, src in target.external.items():
        lines.append(f"# {name} comes from the {src}")
    for it in sorted(items, key=lambda i: canonical(i["metadata"]["name"])):
        md, info = it["metadata"], it["download_info"]
        sha = info.get("archive_info", {}).get("hashes", {}).get("sha256") or info["archive_info"]["hash"].split("=")[1]
        lines.append(f"{canonical(md['name'])}=={md['version']} \\\n    --hash=sha256:{sha}")
    target.lock_file.write_text("\n".join(lines) + "\n")
    return target.lock_file


def check(target: Target) -> list[str]:
    """Resolve every pinned line to a wheel for the target and check the lock is closed.

    Returns a list of problems (empty: the lock installs on that target without a build
    step and without reaching for a package it does not pin).
    """
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    pins = read_lock(target.lock_file)
    lines = [f"{n}=={v}" for n, v in pins.items()]
    items = resolve(target, lines, no_deps=True)
    problems = []
    got = {canonical(i["metadata"]["name"]): i for i in items}
    for n in pins:
        if n not in got:
            problems.append(f"{n}=={pins[n]}: pip did not select it")
            continue
        url = got[n]["download_info"]["url"]
        if not url.endswith(".whl"):
            problems.append(f"{n}=={pins[n]}: resolves to a source archive {url}")
    env = {"python_version": target.python, "python_full_version": target.python + ".0",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "platform_machine": target.pip_platforms[0].split("_", 3)[-1], "extra": "",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    available = {**pins, **{canonical(k): v for k, v in target.system.items()}}
    for n, it in got.items():
        for spec in it["metadata"].get("requires_dist") or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = canonical(req.name)
            if dep not in available:
                problems.append(f"{n} needs {spec!r}, which the lock does not pin")
            elif req.specifier and not req.specifier.contains(Version(available[dep]), prereleases=True):
                problems.append(f"{n} needs {spec!r}, but the lock has {dep}=={available[dep]}")
        rp = it["metadata"].get("requires_python")
        if rp and not SpecifierSet(rp).contains(Version(target.python + ".0")):
            problems.append(f"{n} requires Python {rp}, the target has {target.python}")
    return problems


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "list":
        print("\n".join(TARGETS))
        return 0
    if not rest:
        print(f"usage: targets.py {cmd} TARGET (known targets: {', '.join(TARGETS)})", file=sys.stderr)
        return 2
    try:
        target = get(rest[0])
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    if cmd == "show":
        print(json.dumps({**asdict(target), "lock_file": str(target.lock_file)}, indent=2))
    elif cmd == "pip-args":
        print(" ".join(target.pip_args()))
    elif cmd == "lock":
        print(f"wrote {lock(target)}")
    elif cmd == "check":
        problems = check(target)
        for p in problems:
            print(f"{target.name}: {p}", file=sys.stderr)
        if problems:
            return 1
        print(f"{target.name}: {len(read_lock(target.lock_file))} pinned wheels resolve for "
              f"{target.abi} {target.pip_platforms[0]}; the lock is closed")
    else:
        print(f"unknown command {cmd!r}; commands: list, show, pip-args, lock, check", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
