"""kafkaloop.fastapi.serving_gc: the collector tuned for serving, and put back afterwards."""

from __future__ import annotations

import gc
import weakref

from kafkaloop.fastapi import serving_gc


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_serving_gc_freezes_start_up_objects_and_restores_the_collector() -> None:
    before = gc.get_threshold()
    startup_object = {"routes": ["made at start-up"]}
    with serving_gc(young_threshold=12_345):
        assert gc.get_threshold() == (12_345, *before[1:])
        assert gc.get_freeze_count() > 0
        assert all(o is not startup_object for o in gc.get_objects())  # no longer walked
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_cycles_made_while_serving_are_still_collected_without_asking() -> None:
    with serving_gc(young_threshold=200):
        cycle = _Node()
        gone = weakref.ref(cycle)
        del cycle
        # Allocations, not gc.collect(), set the collection off.
        kept: list[list[int]] = [[] for _ in range(1_000)]
        assert gone() is None
        del kept


def test_nested_blocks_restore_the_collector_only_at_the_outermost_exit() -> None:
    before = gc.get_threshold()
    with serving_gc(young_threshold=20_000):
        with serving_gc(young_threshold=30_000):
            assert gc.get_threshold()[0] == 20_000
        assert gc.get_threshold()[0] == 20_000
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_freeze_made_before_serving_stays_and_a_disabled_threshold_is_left_alone() -> None:
    before = gc.get_threshold()
    gc.freeze()  # e.g. a pre-fork server's own
    try:
        frozen = gc.get_freeze_count()
        gc.set_threshold(0, *before[1:])
        with serving_gc():
            assert gc.get_threshold()[0] == 0
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_serving_gc_restores_the_collector_when_the_block_raises() -> None:
    before = gc.get_threshold()
    try:
        with serving_gc():
            raise RuntimeError("start-up failed")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
