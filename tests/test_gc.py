"""kafkaloop.fastapi.serving_gc: the collector tuned for serving, and put back afterwards."""

from __future__ import annotations

import gc

from kafkaloop.fastapi import serving_gc


def test_serving_gc_freezes_start_up_objects_and_restores_the_collector() -> None:
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    startup_object = {"routes": ["made at start-up"]}
    with serving_gc(young_threshold=12_345):
        assert gc.get_threshold() == (12_345, *before[1:])
        assert gc.get_freeze_count() > frozen_before
        assert all(o is not startup_object for o in gc.get_objects())  # no longer walked
        # Cycles made while serving are still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before


def test_serving_gc_restores_the_collector_when_the_block_raises() -> None:
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    try:
        with serving_gc():
            raise RuntimeError("start-up failed")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen_before
