"""The Postgres sink's "do campaign messages wait?" answer, kept a few seconds: a pure wrapper."""

from collections.abc import Callable

from promo_pipeline.defs.sinks.assets import InputWaits


def asker(*answers: bool) -> tuple[list[bool], Callable[[], bool]]:
    asked: list[bool] = []
    left = iter(answers)

    def waits() -> bool:
        asked.append(True)
        return next(left)

    return asked, waits


def test_the_answer_is_kept_for_its_time_to_live() -> None:
    asked, waits = asker(True, False)
    kept = InputWaits(waits, ttl_s=3600)
    assert [kept(), kept(), kept()] == [True, True, True]
    assert len(asked) == 1


def test_past_its_time_to_live_it_asks_again() -> None:
    asked, waits = asker(True, False)
    every_time = InputWaits(waits, ttl_s=0)
    assert [every_time(), every_time()] == [True, False]
    assert len(asked) == 2
