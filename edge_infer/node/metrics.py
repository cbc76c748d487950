"""The node's Prometheus metrics (``prometheus_client``, one registry per node).

Counters: instances received (``kind``: input, kept_aside) and refused (``reason``),
associations refused (``reason``), delivery retries; a histogram of job durations by
``outcome`` (ok, failed, unusable; its ``_count`` is the number of jobs); gauges for the queue
depth, spool bytes, a permanent delivery failure, and ``edge_infer_model_info`` labelled with
the model name and sha256.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import BackendUnavailableError

INSTALL_HINT = "pip install 'edge-infer[dicom]'"


def spool_bytes(root: Path) -> int:
    """Bytes of the files under ``root`` (a scrape-time walk; unreadable entries count 0)."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


class Metrics:
    """Counters and gauges of one node, rendered by :meth:`render` in Prometheus text format."""

    def __init__(self, spool_root: Path, queue_depth: Callable[[], int]) -> None:
        try:
            import prometheus_client as pc
        except ImportError:
            raise BackendUnavailableError(f"the node's /metrics needs prometheus_client: {INSTALL_HINT}") from None
        self._pc = pc
        self.registry = reg = pc.CollectorRegistry()
        self.received = pc.Counter("edge_infer_instances_received", "Instances stored and acknowledged",
                                   ["kind"], registry=reg)
        self.refused = pc.Counter("edge_infer_instances_refused", "Instances refused with a failure status",
                                  ["reason"], registry=reg)
        self.associations_refused = pc.Counter("edge_infer_associations_refused", "Associations or contexts refused",
                                               ["reason"], registry=reg)
        self.jobs = pc.Histogram("edge_infer_job_seconds", "Jobs by outcome and their durations", ["outcome"],
                                 buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=reg)
        self.retries = pc.Counter("edge_infer_delivery_retries", "Failed sends to be retried", registry=reg)
        self.permanent = pc.Gauge("edge_infer_delivery_permanent_failure",
                                  "1 while the destination refuses permanently (AE unknown, no context)", registry=reg)
        pc.Gauge("edge_infer_queue_depth", "Jobs waiting or running", registry=reg).set_function(queue_depth)
        pc.Gauge("edge_infer_spool_bytes", "Bytes in the spool", registry=reg).set_function(
            lambda: spool_bytes(spool_root))
        self.model = pc.Gauge("edge_infer_model_info", "The loaded model", ["model", "sha256"], registry=reg)

    def instance(self, kind: str, refused: bool = False) -> None:
        (self.refused if refused else self.received).labels(kind).inc()

    def association_refused(self, reason: str) -> None:
        self.associations_refused.labels(reason).inc()

    def job(self, outcome: str, seconds: float) -> None:
        self.jobs.labels(outcome).observe(seconds)

    def model_loaded(self, name: str, sha256: str) -> None:
        self.model.labels(name, sha256).set(1)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST
