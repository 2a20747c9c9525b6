"""The serving process freezes its start-up heap and collects less often."""

from __future__ import annotations

import gc

from service.config import Settings
from service.lifespan import tuned_gc


def test_tuned_gc_applies_and_restores() -> None:
    before = gc.get_threshold()
    settings = Settings(_env_file=None, gc_thresholds="40000,15,50")
    with tuned_gc(settings):
        assert gc.get_threshold() == (40000, 15, 50)
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_tuning_can_be_switched_off() -> None:
    before = gc.get_threshold()
    with tuned_gc(Settings(_env_file=None, gc_tuning=False)):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
