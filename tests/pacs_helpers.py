"""A real PACS for the node tests: Debian's Orthanc in a loopback-only network namespace.

Orthanc has no bind-address option and listens on every interface, so it runs in a network
namespace made by the test (``ip netns add``) with only ``lo`` up; the node runs in the same
namespace and the test talks to Orthanc's REST API through ``ip netns exec`` (orthanc_rest.py).
Everything is removed at the end.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from node_helpers import Proc

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
HTTP_PORT, DICOM_PORT, NODE_PORT = 8042, 4242, 11112
#: Orthanc's HTTP user (basic authentication on, as a hospital's would be)
USER = ("edge", "Orthanc-test-secret")
STOW_URL = f"dicomweb+http://127.0.0.1:{HTTP_PORT}/dicom-web"
REST = Path(__file__).resolve().parent / "orthanc_rest.py"


def namespace_problem() -> str:
    """'' when this process may make network namespaces and Orthanc is installed, else why not."""
    if not Path(ORTHANC).is_file():
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if not shutil.which("ip"):
        return "iproute2's ip is not installed"
    name = f"ei-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"network namespaces are not allowed here ({made.stderr.strip() or 'ip netns add failed'})"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ""


class Namespace:
    """A loopback-only network namespace; :meth:`close` removes it."""

    def __init__(self) -> None:
        self.name = f"ei-test-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"], check=True,
                       capture_output=True)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def orthanc_config(folder: Path, node_port: int = NODE_PORT) -> Path:
    """Orthanc's JSON configuration: storage in ``folder``, the node as modality ``edge``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "edge-infer-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": HTTP_PORT, "DicomPort": DICOM_PORT, "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER[0]: USER[1]},
        "DicomModalities": {"edge": ["EDGE_INFER", "127.0.0.1", node_port]},
        "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=1))
    return path


class Orthanc:
    """Orthanc started in ``ns``; REST calls go through ``ip netns exec``."""

    def __init__(self, ns: Namespace, folder: Path) -> None:
        self.ns = ns
        self.proc = Proc([*ns.prefix(), ORTHANC, str(orthanc_config(folder))], folder / "orthanc.log")

    def call(self, method: str, path: str, bodies: Sequence[bytes] = ()) -> list[tuple[int, bytes]]:
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for i, body in enumerate(bodies):
                files.append(Path(tmp) / f"{i}.bin")
                files[-1].write_bytes(body)
            url = f"http://127.0.0.1:{HTTP_PORT}{path}"
            env = {**os.environ, "ORTHANC_AUTH": ":".join(USER)}
            p = subprocess.run([*self.ns.prefix(), sys.executable, str(REST), method, url, *map(str, files)],
                               capture_output=True, text=True, timeout=300, env=env)
        if p.returncode != 0:
            raise RuntimeError(f"REST {method} {path} failed: {p.stderr.strip()[-500:]}")
        return [(code, base64.b64decode(body)) for code, body in json.loads(p.stdout)]

    def json(self, method: str, path: str, body: Any = None) -> Any:
        [(code, data)] = self.call(method, path, [json.dumps(body).encode()] if body is not None else [])
        if code >= 400:
            raise RuntimeError(f"REST {method} {path} answered {code}: {data[:300]!r}")
        return json.loads(data)

    def upload(self, files: Sequence[Path]) -> str:
        """POST each file to /instances; returns the Orthanc id of their study."""
        answers = self.call("POST", "/instances", [p.read_bytes() for p in files])
        bad = [code for code, _ in answers if code >= 400]
        if bad:
            raise RuntimeError(f"Orthanc refused {len(bad)} upload(s): {bad[:3]}")
        return json.loads(answers[-1][1])["ParentStudy"]

    def alive(self) -> bool:
        try:
            return self.json("GET", "/system")["DicomAet"] == "ORTHANC"
        except (RuntimeError, ValueError):
            return False

    def store_job(self, study: str) -> dict:
        """``POST /modalities/edge/store`` of the study with default settings; the finished job."""
        from node_helpers import wait_until

        job = self.json("POST", "/modalities/edge/store", {"Resources": [study], "Synchronous": False})["ID"]
        return wait_until(lambda: _finished(self.json("GET", f"/jobs/{job}")), 120, "Orthanc's store job")

    def series_modalities(self, study: str) -> dict[str, str]:
        """Orthanc series id -> Modality of every series of the study."""
        return {s["ID"]: s["MainDicomTags"].get("Modality", "") for s in self.json("GET", f"/studies/{study}/series")}

    def instance_file(self, series: str) -> bytes:
        [first] = self.json("GET", f"/series/{series}")["Instances"][:1]
        [(code, data)] = self.call("GET", f"/instances/{first}/file")
        return data


def _finished(job: dict) -> dict | None:
    return job if job.get("State") in ("Success", "Failure") else None
