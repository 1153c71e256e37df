"""The asset checks run with every promo_job run and judge that run, on the real stack."""

from __future__ import annotations

import json

import pytest
from dagster import AssetCheckEvaluation, AssetCheckSeverity, DagsterInstance

from promo_pipeline_tests.support.pipeline import Pipeline, campaign, new_uuid

pytestmark = [pytest.mark.stack, pytest.mark.spark]

CHECKS = {
    "one_trigger_per_campaign_and_client",
    "triggers_in_both_sinks",
    "rejected_share_below_threshold",
    "no_input_lost_before_read",
}


def run_with_checks(pipeline: Pipeline) -> dict[str, AssetCheckEvaluation]:
    """One run of the job as the sensor would start it; the checks' verdicts by name."""
    from promo_pipeline.definitions import defs as load_defs

    defs = load_defs()
    result = defs.resolve_job_def("promo_job").execute_in_process(
        instance=DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert result.success, "the run failed; failed checks must never fail it"
    verdicts = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(verdicts) == CHECKS, "every check runs with the job"
    return verdicts


def values(evaluation: AssetCheckEvaluation) -> dict[str, object]:
    return {name: entry.value for name, entry in evaluation.metadata.items()}


def test_checks_pass_on_a_clean_run_and_the_reject_share_warns_above_threshold(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = campaign(), campaign()
    pipeline.subscribe(
        (new_uuid(), first["restaurant_id"]),
        (new_uuid(), first["restaurant_id"]),
        (new_uuid(), second["restaurant_id"]),
    )
    pipeline.publish(first, second)

    clean = run_with_checks(pipeline)
    assert all(v.passed for v in clean.values()), {n: v.description for n, v in clean.items()}
    sinks = values(clean["triggers_in_both_sinks"])
    assert (sinks["triggers"], sinks["kafka_acknowledged"]) == (3, 3)
    assert len(pipeline.pairs()) == 3
    assert sinks["outbox_pending"] == 0
    assert len(pipeline.output()) == 3
    assert values(clean["rejected_share_below_threshold"])["rejected_share"] == 0.0

    # 1 of 4 rejected is 25%: above a 20% threshold, a warning that leaves the run green.
    monkeypatch.setenv("PROMO_REJECT_WARN_RATIO", "0.2")
    pipeline.publish(campaign(), campaign(), campaign(), b"{not json")
    noisy = run_with_checks(pipeline)
    share = noisy["rejected_share_below_threshold"]
    assert not share.passed
    assert share.severity == AssetCheckSeverity.WARN
    assert values(share)["rejected"] == 1 and values(share)["messages"] == 4
    assert values(share)["threshold"] == 0.2
    assert "1 of 4 messages rejected (25.0%" in share.description
    assert noisy["triggers_in_both_sinks"].passed  # 0 triggers: nothing to find, nothing lost
    assert len(pipeline.dead_letters()) == 1

    # The same share under a 30% threshold passes.
    monkeypatch.setenv("PROMO_REJECT_WARN_RATIO", "0.3")
    pipeline.publish(campaign(), campaign(), campaign(), b"[]")
    assert run_with_checks(pipeline)["rejected_share_below_threshold"].passed


def test_duplicate_check_fails_when_the_ledger_holds_a_pair_twice(pipeline: Pipeline) -> None:
    active = campaign()
    client = new_uuid()
    pipeline.subscribe((client, active["restaurant_id"]))
    pipeline.publish(active)
    guarded = run_with_checks(pipeline)["one_trigger_per_campaign_and_client"]
    assert guarded.passed and values(guarded)["unique_index_valid"] is True

    # What only a bypass of the pipeline could do: drop the guard and copy a row.
    pipeline.sql("DROP INDEX public.subscribers_feedback_campaign_client_key")
    unguarded = run_with_checks(pipeline)["one_trigger_per_campaign_and_client"]
    assert unguarded.passed and values(unguarded)["unique_index_valid"] is False
    # An index on the pair that is not unique does not count as the guard either.
    pipeline.sql("CREATE INDEX decoy ON public.subscribers_feedback (adv_campaign_id, client_id)")
    columns = [name for name in pipeline.feedback()[0] if name != "id"]
    listed = ", ".join(columns)
    pipeline.sql(
        f"INSERT INTO public.subscribers_feedback ({listed}) "
        f"SELECT {listed} FROM public.subscribers_feedback"
    )
    verdict = run_with_checks(pipeline)["one_trigger_per_campaign_and_client"]
    assert not verdict.passed
    assert verdict.severity == AssetCheckSeverity.ERROR
    assert values(verdict)["duplicate_pairs"] == 1
    examples = values(verdict)["examples"]
    examples = json.loads(examples) if isinstance(examples, str) else examples
    assert examples == [{"campaign": active["adv_campaign_id"], "client": client, "rows": 2}]
