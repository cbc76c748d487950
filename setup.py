"""Package discovery only (all metadata is in pyproject.toml).

The repository's ``export/`` folder installs as ``edge_infer_export``: a top-level package named
``export`` in site-packages could collide with other projects. From a checkout,
``python -m export`` works as before. The ARM images copy only ``edge_infer/``; then only the
runtime is found.
"""

import os

from setuptools import find_packages, setup

packages = find_packages(include=["edge_infer", "edge_infer.*", "firmware_profiles"])
package_dir = {}
if os.path.isdir("export"):
    packages += ["edge_infer_export" + p[len("export"):] for p in find_packages(include=["export", "export.*"])]
    package_dir["edge_infer_export"] = "export"

setup(packages=packages, package_dir=package_dir)
