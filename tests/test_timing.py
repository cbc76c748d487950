"""Wall-time clocks of a run: :class:`Timer` per stage, :class:`BusyClock` over backend calls."""

from __future__ import annotations

import threading
import time

from edge_infer.timing import BusyClock, Timer


class TestTimer:
    def test_stages_add_up(self):
        timer = Timer()
        for _ in range(2):
            with timer.stage("infer"):
                time.sleep(0.02)
        assert set(timer.seconds) == {"infer"} and timer.seconds["infer"] >= 0.04


class TestBusyClock:
    def test_busy_clock_counts_overlap_once(self):
        clock = BusyClock()
        nap = clock.timed(lambda x: time.sleep(x))
        threads = [threading.Thread(target=nap, args=(0.3,)) for _ in range(3)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        assert 0.29 <= clock.seconds <= wall + 1e-3
