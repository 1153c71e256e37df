"""How the Kafka sink plans its Spark jobs over the outbox slices: a pure function."""

from promo_pipeline.defs.sinks.assets import push_jobs


def test_many_small_slices_share_tasks_and_jobs_stay_near_the_row_budget() -> None:
    pending = [(i, "run", 500) for i in range(1, 11)]
    assert push_jobs(pending, rows_per_job=2000, tasks=4) == [
        [[1], [2], [3], [4]],
        [[5], [6], [7], [8]],
        [[9], [10]],
    ]


def test_slices_are_dealt_to_the_lightest_task() -> None:
    pending = [(1, "a", 100), (2, "a", 250), (3, "b", 250), (4, "b", 250), (5, "b", 10)]
    # Largest first: 2, 3 and 4 take one task each, then 1 and 5 go to the lightest.
    assert push_jobs(pending, rows_per_job=1000, tasks=3) == [[[1, 2], [3, 5], [4]]]


def test_a_slice_larger_than_the_budget_is_a_job_of_its_own() -> None:
    assert push_jobs([(1, "a", 5), (2, "a", 3_000_000), (3, "a", 5)], 1_000_000, 4) == [
        [[1]],
        [[2]],
        [[3]],
    ]


def test_nothing_pending_is_no_job() -> None:
    assert push_jobs([], 1_000_000, 4) == []
