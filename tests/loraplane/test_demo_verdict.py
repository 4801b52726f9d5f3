"""The demo fails (exit 1) unless it showed what it set out to show."""

from __future__ import annotations

from loraplane.demo import report_failures


def models(base: float, v1: float, v2: float) -> list[dict]:
    return [{"exact_match": x} for x in (base, v1, v2)]


ROLLOUT = {"promoted_on_evidence": True, "report": {"state": "promoted", "reason": "feedback shows ..."}}
BROKEN = {"rolled_back_in_time": True, "answered": 40, "requests": 40, "report": {"reason": "guard error_rate"}}


def test_a_demo_that_showed_everything_passes() -> None:
    assert report_failures(models(0.0, 0.2, 0.58), ROLLOUT, BROKEN) == []


def test_each_missing_piece_of_evidence_fails_the_demo() -> None:
    held = {"promoted_on_evidence": False, "report": {"state": "running", "reason": "feedback not yet shown better"}}
    late = {**BROKEN, "rolled_back_in_time": False, "answered": 31}
    failures = report_failures(models(0.0, 0.58, 0.58), held, late)
    assert len(failures) == 4, failures
    assert "not better than v1" in failures[0] and "not promoted on evidence" in failures[1]
    assert "within 2 intervals" in failures[2] and "9 of 40 user requests got no answer" in failures[3]
