"""The collection summary points at episodes a busy machine recorded too slowly."""

from crane_x7_vla.cli.collect import SLOW_SHARE, slow_episodes
from crane_x7_vla.ros.collect_driver import EpisodeResult


def _episode(index: int, hz):
    return EpisodeResult(index=index, seed=index, instruction="reach the red cube", path=f"/d/episode_{index:04d}",
                         steps=25, success_check=True, success_stored=True, seconds=1.5, achieved_hz=hz,
                         dropped_steps=0, stale_frames={}, end="success")


def test_slow_episodes_are_those_below_the_share_of_the_requested_rate():
    # rates seen in one run while another program took a core: 10.0, 9.6, 6.9, 1.39 Hz of 10
    eps = [_episode(0, 10.0), _episode(1, 9.615), _episode(2, 6.897), _episode(3, 1.389), _episode(4, None)]
    assert [e.index for e in slow_episodes(eps, 10.0)] == [2, 3]
    assert [e.index for e in slow_episodes(eps, 5.0)] == [3]
    edge = _episode(5, SLOW_SHARE * 10.0)
    assert slow_episodes([edge], 10.0) == []  # exactly at the share is kept
