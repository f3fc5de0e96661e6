"""--action-label-sigma: Gaussian soft targets over neighbouring action bins (openvla)."""

import pytest
import torch

from crane_x7_vla.backends.openvla import decode
from crane_x7_vla.training.cli import build_parser, config_from_args
from crane_x7_vla.training.config import ConfigError

VOCAB, N_BINS = 300, 256
FIRST = VOCAB - N_BINS


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_flag_reaches_the_config_and_defaults():
    assert parse("--backend", "openvla", "--action-label-sigma", "1.5").action_label_sigma == 1.5
    assert parse("--backend", "openvla").action_label_sigma == 0.0  # one-hot, as OpenVLA-7B was trained
    with pytest.raises(ConfigError, match="--action-label-sigma is for the openvla backend"):
        parse("--backend", "openpi", "--action-label-sigma", "2")
    with pytest.raises(ConfigError, match="--action-label-sigma must be >= 0"):
        parse("--backend", "openvla", "--action-label-sigma", "-1")


def _loss_with_peak_at(offset: int, sigma: float) -> float:
    """Loss of one action token whose demonstrated id is FIRST+100 when the model puts its
    probability mass on FIRST+100+offset."""
    target = FIRST + 100
    logits = torch.full((1, 3, VOCAB), -10.0)
    logits[0, 1, target + offset] = 10.0  # position 1 predicts token 2 (the label)
    labels = torch.full((1, 3), decode.IGNORE)
    labels[0, 2] = target
    batch = {"input_ids": torch.zeros((1, 3), dtype=torch.long), "labels": labels}
    loss, pred, tgt, mask = decode.action_loss(logits, batch, FIRST, sigma)
    assert int(tgt) == target and int(pred) == target + offset and int(mask.sum()) == 1
    return float(loss)


def test_near_misses_cost_less_than_far_misses_only_with_sigma():
    near, far, exact = (_loss_with_peak_at(o, 2.0) for o in (1, 60, 0))
    assert exact < near < far
    # One-hot cross-entropy: every wrong bin costs the same.
    assert _loss_with_peak_at(1, 0.0) == pytest.approx(_loss_with_peak_at(60, 0.0))
    assert _loss_with_peak_at(0, 0.0) < 1e-3


def test_soft_targets_match_cross_entropy_as_sigma_shrinks():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, VOCAB)
    labels = torch.full((2, 5), decode.IGNORE)
    labels[:, 3:] = torch.randint(FIRST, VOCAB, (2, 2))
    batch = {"input_ids": torch.zeros((2, 5), dtype=torch.long), "labels": labels}
    hard = decode.action_loss(logits, batch, FIRST, 0.0)[0]
    soft = decode.action_loss(logits, batch, FIRST, 0.05)[0]
    assert float(soft) == pytest.approx(float(hard), rel=1e-4)


def test_tiny_preset_trains_with_soft_labels():
    assert parse("--backend", "openvla", "--model", "tiny").action_label_sigma == 2.0
    assert parse("--backend", "openvla", "--model", "tiny", "--action-label-sigma", "0").action_label_sigma == 0.0


def test_goal_tokens_get_their_own_width():
    assert parse("--backend", "openvla", "--goal-label-sigma", "8").goal_label_sigma == 8.0
    assert parse("--backend", "openvla").goal_label_sigma is None  # as --action-label-sigma
    with pytest.raises(ConfigError, match="--goal-label-sigma must be >= 0"):
        parse("--backend", "openvla", "--goal-label-sigma", "-1")
    # rows of 3 goal tokens then actions, labelled at different offsets (prompts of other lengths)
    labels = torch.full((2, 9), decode.IGNORE)
    labels[0, 2:8] = torch.arange(FIRST, FIRST + 6)
    labels[1, 4:9] = torch.arange(FIRST, FIRST + 5)
    batch = {"input_ids": torch.zeros((2, 9), dtype=torch.long), "labels": labels}
    sig = decode.label_sigmas(batch, 3, 8.0, 2.0)
    assert sig[0, 2:5].tolist() == [8.0] * 3 and sig[0, 5:8].tolist() == [2.0] * 3
    assert sig[1, 4:7].tolist() == [8.0] * 3 and sig[1, 7:9].tolist() == [2.0] * 2
    assert decode.label_sigmas(batch, 3, 2.0, 2.0) == 2.0 and decode.label_sigmas(batch, 0, 8.0, 2.0) == 2.0
    # the per-token widths reach the loss: equal widths give the float's loss, a wider goal
    # width forgives a goal token's near miss more
    torch.manual_seed(0)
    logits = torch.randn(2, 9, VOCAB)
    same = decode.action_loss(logits, batch, FIRST, decode.label_sigmas(batch, 3, 2.0, 2.0))[0]
    as_tensor = decode.action_loss(logits, batch, FIRST, torch.full((2, 9), 2.0))[0]
    assert float(as_tensor) == pytest.approx(float(same), rel=1e-6)
    near = torch.full((1, 3, VOCAB), -10.0)
    near[0, 1, FIRST + 105] = 10.0  # 5 bins from the goal token's label
    one = {"input_ids": torch.zeros((1, 3), dtype=torch.long),
           "labels": torch.tensor([[decode.IGNORE, decode.IGNORE, FIRST + 100]])}
    narrow = decode.action_loss(near, one, FIRST, decode.label_sigmas(one, 3, 2.0, 2.0))[0]
    wide = decode.action_loss(near, one, FIRST, decode.label_sigmas(one, 3, 8.0, 2.0))[0]
    assert float(wide) < float(narrow)
