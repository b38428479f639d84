"""What every long-running tqueues process does once started."""

from __future__ import annotations

import gc

from tqueues.cli.common import quiet_gc


def test_given_a_started_process_when_quiet_gc_then_its_objects_are_frozen_and_young_collections_are_rarer() -> None:
    before = gc.get_threshold()
    try:
        quiet_gc()
        # The objects made so far are out of every collection's way
        assert gc.get_freeze_count() > 1000
        # And the youngest generation waits for 20,000 new containers; the older ones keep theirs
        assert gc.get_threshold() == (20_000, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
