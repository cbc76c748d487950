"""``edge-infer batch``'s cluster helpers without a cluster: sizing from the cores and the
board's memory budget, the Dask settings as environment variables, the version check."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")

from edge_infer.batch import cluster  # noqa: E402
from edge_infer.errors import InputError  # noqa: E402


class TestLocalSizing:
    @pytest.mark.parametrize(("cores", "mem", "budget"),
                             [(2, 64000, None), (8, 3000, 1000.0), (16, 64000, 400.0), (1, 100, None)])
    def test_never_oversubscribes(self, cores, mem, budget):
        s = cluster.local_sizing(cores, mem, budget)
        assert s.workers * s.threads <= cores
        assert s.workers <= max(int(mem // (budget or cluster.DEFAULT_WORKER_MB)), 1)

    def test_memory_bounds_workers(self):
        assert cluster.local_sizing(8, 3000, 1000.0) == cluster.Sizing(3, 2, 1000.0)

    def test_too_many_workers(self):
        with pytest.raises(InputError, match="--workers 3 is more than the 2 cores"):
            cluster.local_sizing(2, 64000, workers=3)

    def test_memory_limit_is_the_board_budget(self):
        assert cluster.local_sizing(2, 64000, 460.8).memory_mb == 460.8
        assert cluster.local_sizing(2, 64000).memory_mb is None  # no board: Dask's default


class TestDaskEnvironment:
    def test_config_keys_become_dask_variables(self):
        env = cluster.dask_environment({"distributed.worker.profile.enabled": False, "distributed.admin.tick-x": 1})
        assert env == {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False", "DASK_DISTRIBUTED__ADMIN__TICK_X": "1"}


class TestCheckVersions:
    class FakeClient:
        def __init__(self, answers):
            self.answers = answers

        def run(self, fn, *args, on_error="raise"):
            return self.answers

    def test_same_version(self):
        from edge_infer import __version__

        assert cluster.check_versions(self.FakeClient({"w1": __version__})) == {"w1": __version__}

    def test_refuses_other_or_missing(self):
        client = self.FakeClient({"w1": "0.0.9", "w2": ModuleNotFoundError("edge-infer")})
        with pytest.raises(InputError, match="workers have edge-infer 0.0.9, not installed"):
            cluster.check_versions(client)
