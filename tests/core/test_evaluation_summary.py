"""Success statistics of an evaluation and the report's table: plain Python, no ROS."""

import json

import pytest

from crane_x7_vla.evaluation.report import write_report
from crane_x7_vla.evaluation.summary import EpisodeOutcome, summarize_episodes, wilson_interval


def _outcome(seed, success, distance):
    return EpisodeOutcome(seed=seed, success=success, time_to_success=2.0 + seed % 3 if success else None,
                          duration=3.0 if success else 10.0, final_distance_m=distance,
                          interventions={"velocity_limit": 1})


def test_summary_counts_successes_and_where_the_failures_ended():
    outcomes = [_outcome(0, True, 0.039), _outcome(1, False, 0.046), _outcome(2, False, 0.21),
                _outcome(3, False, 0.052), _outcome(4, True, 0.035)]
    s = summarize_episodes(outcomes)
    assert (s["episodes"], s["successes"], s["success_rate"]) == (5, 2, 0.4)
    assert s["success_rate_ci95"] == pytest.approx(list(wilson_interval(2, 5)))
    assert s["mean_time_to_success_s"] == pytest.approx((2.0 + 3.0) / 2)
    assert s["median_failure_distance_m"] == pytest.approx(0.052)  # of 0.046, 0.052 and 0.21
    assert s["safety_interventions"] == {"velocity_limit": 5}
    assert [o["final_distance_m"] for o in s["per_seed"]] == [0.039, 0.046, 0.21, 0.052, 0.035]
    # all solved, or distances unknown (an older runner): no figure rather than a wrong one
    assert summarize_episodes([_outcome(0, True, 0.03)])["median_failure_distance_m"] is None
    assert summarize_episodes([_outcome(0, False, None)])["median_failure_distance_m"] is None


def test_report_table_shows_how_far_the_failures_ended(tmp_path):
    policy = summarize_episodes([_outcome(0, True, 0.03), _outcome(1, False, 0.047)])
    hold = summarize_episodes([_outcome(0, False, 0.29), _outcome(1, False, 0.31)])
    json_path, md_path = write_report(tmp_path, {"task": "reach", "backend": "openvla",
                                                 "evaluation": {"policy": policy, "hold still": hold}}, {})
    md = md_path.read_text()
    assert "| policy | 50% (1/2, 95% CI" in md and "| 4.7 cm |" in md
    assert "| hold still | 0% (0/2, 95% CI" in md and "| 30.0 cm |" in md
    assert json.loads(json_path.read_text())["evaluation"]["hold still"]["median_failure_distance_m"] == 0.3


def test_pick_place_reports_grasps_beside_placements(tmp_path):
    """Grasp success and place success separately: 3 grasped of 4, 1 of them placed."""
    outcomes = [_outcome(0, True, 0.01), _outcome(1, False, 0.2), _outcome(2, False, 0.15), _outcome(3, False, 0.3)]
    for o, grasped in zip(outcomes, (True, True, True, False)):
        o.grasped = grasped
    s = summarize_episodes(outcomes)
    assert (s["grasps"], s["grasp_rate"], s["successes"]) == (3, 0.75, 1)
    assert s["grasp_rate_ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    reach = summarize_episodes([_outcome(0, True, 0.03)])  # a task without a grasp: no grasp figure
    assert (reach["grasps"], reach["grasp_rate"]) == (None, None)
    _, md = write_report(tmp_path, {"task": "pick_place", "backend": "openpi", "evaluation": {"policy": s}}, {})
    table = md.read_text()
    assert "grasped the named cube" in table and "75% (3/4" in table and "25% (1/4" in table
    _, md = write_report(tmp_path, {"task": "reach", "backend": "openpi", "evaluation": {"policy": reach}}, {})
    assert "grasped" not in md.read_text()
