"""Job metrics from history records (zincati_py.schedule.metrics): runs, retries, failures."""

from __future__ import annotations

from zincati_py.schedule.metrics import job_metrics, runs_of


def _rec(result: str, attempt: int | None, **extra: object) -> dict[str, object]:
    return {"result": result, "attempt": attempt, "start": "2026-01-01T00:00:00+00:00",
            "end": "2026-01-01T00:00:02.5+00:00"} | extra  # fmt: skip


def test_retries_group_into_one_run_and_failures_count_from_the_end() -> None:
    records = [
        _rec("success", None),  # recorded before attempt numbers existed
        _rec("exit-code", 1), _rec("success", 2),  # one run, success on its retry
        _rec("exit-code", 1), _rec("exit-code", 2),  # a run that failed for good
        _rec("timeout", 1, overran=True),  # and another
    ]  # fmt: skip
    assert [len(run) for run in runs_of(records)] == [1, 2, 2, 1]
    m = job_metrics({"last_run": "L", "next_run": "N"}, records)
    assert m["runs_by_result"] == {"success": 2, "exit-code": 1, "timeout": 1}
    assert m["consecutive_failures"] == 2 and m["last_result"] == "timeout"
    assert (m["attempts"], m["last_attempts"], m["overruns"]) == (6, 1, 1)
    assert m["last_duration_secs"] == 2.5 and (m["last_start"], m["next_run"]) == ("L", "N")
    empty = job_metrics({}, [])
    assert empty["runs_by_result"] == {} and empty["last_result"] is None
    assert empty["consecutive_failures"] == 0 and empty["last_duration_secs"] is None
