"""OpenVLA's action discretisation, prompt and normalisation mask, checked against values
worked out by hand from the published definition: 256 bin edges np.linspace(-1, 1, 256),
d = np.digitize(clip(x, -1, 1), edges) in 1..256, token id = vocab_size - d, and a token
decoded to the centre of bin clip(d - 1, 0, 254) among the 255 centres."""

import numpy as np
import pytest
import torch

from crane_x7_vla.backends.openvla import decode
from crane_x7_vla.backends.openvla.action_tokenizer import LEGACY_UNIFORM, OPENVLA_BINS, ActionCodec, ActionTokenizer
from crane_x7_vla.backends.openvla.model import IGNORE, build_batch, load_vla, materialize_preset
from crane_x7_vla.backends.openvla.prompt import openvla_prompt
from crane_x7_vla.preprocess import Normalizer

V = 32000  # Llama-2's vocabulary: action tokens 31744..31999
STEP = 2.0 / 255.0  # distance between neighbouring edges


def identity(dim: int = 1) -> Normalizer:
    return Normalizer(np.full(dim, -1.0), np.full(dim, 1.0))


def test_hand_computed_tokens_and_centres():
    tok = ActionTokenizer(V, identity())
    # -1 sits on the first edge: d = 1; +1 sits on the last edge: d = 256; 0 lies between
    # edges 127 (-1/255) and 128 (+1/255): d = 128
    cases = {
        -1.0: V - 1,
        -5.0: V - 1,
        1.0: V - 256,
        7.0: V - 256,
        0.0: V - 128,
        -1.0 + 10.5 * STEP: V - 11,
        1.0 - 0.5 * STEP: V - 255,
        -1.0 + 0.999 * STEP: V - 1,
        -1.0 + 1.001 * STEP: V - 2,
    }
    for x, token in cases.items():
        assert tok.encode(np.array([x]))[0] == token, x
    assert tok.first_id == V - 256
    # token V - d decodes to centre d - 1 (clipped to 0..254): -1 + (d - 0.5) * STEP
    for d in (1, 2, 11, 128, 255):
        np.testing.assert_allclose(tok.decode_normalized(np.array([V - d])), [-1.0 + (d - 0.5) * STEP], atol=1e-12)
    # d = 256 (x == 1 exactly) has no bin of its own: it decodes to the last centre
    np.testing.assert_allclose(tok.decode_normalized(np.array([V - 256])), [1.0 - 0.5 * STEP], atol=1e-12)
    np.testing.assert_allclose(tok.decode_normalized(np.array([V - 128])), [0.0], atol=1e-12)
    with pytest.raises(ValueError, match="action range"):
        tok.decode_normalized(np.array([V - 257]))


def test_a_dense_sweep_matches_the_closed_form():
    tok = ActionTokenizer(V, identity())
    x = np.linspace(-1.0, 1.0, 100_003)[1:-1]
    x = x[np.abs((x + 1.0) / STEP - np.round((x + 1.0) / STEP)) > 1e-9]  # away from the edges themselves
    d = np.floor((x + 1.0) / STEP).astype(np.int64) + 1
    np.testing.assert_array_equal(tok.encode(x), V - d)
    back = tok.decode_normalized(tok.encode(x))
    assert np.all(np.abs(back - x) <= STEP / 2 + 1e-12)  # at most half a bin away
    # the former 256 equal bins encode half of all values one token away from OpenVLA's
    legacy = ActionTokenizer(V, identity(), discretization=LEGACY_UNIFORM)
    assert 0.4 < np.mean(legacy.encode(x) != tok.encode(x)) < 0.6


def test_robot_units_go_through_q01_q99_and_the_mask():
    stats = {"action": {"q01": [-2.0, 0.0], "q99": [2.0, 1.0]}}
    normalizer = Normalizer.from_stats(stats, "action")
    both = ActionTokenizer(V, normalizer)
    arm_only = ActionTokenizer(V, normalizer, mask=np.array([True, False]))
    values = np.array([[1.0, 0.7]])  # normalised: 0.5 and 0.4; the masked gripper stays 0.7
    np.testing.assert_array_equal(both.encode(values)[0], V - (np.floor((np.array([0.5, 0.4]) + 1) / STEP) + 1))
    np.testing.assert_array_equal(arm_only.encode(values)[0], V - (np.floor((np.array([0.5, 0.7]) + 1) / STEP) + 1))
    decoded = arm_only.decode(arm_only.encode(values))[0]
    assert abs(decoded[0] - 1.0) <= 2.0 * STEP and abs(decoded[1] - 0.7) <= STEP / 2  # gripper: the centre itself
    assert arm_only.encode(np.array([[0.0, 1.4]]))[0, 1] == V - 256  # clipped at 1 like any normalised value


def _stats():
    q01 = [-1.0] * 7 + [0.3]
    q99 = [1.0] * 7 + [1.1]
    return {"action": {"q01": q01, "q99": q99}, "proprio": {"q01": q01, "q99": q99}}


def test_codec_records_its_bins_and_mask_and_reads_older_checkpoints():
    codec = ActionCodec(V, _stats(), normalization_mask=[True] * 7 + [False])
    space = codec.action_space()
    assert space["discretization"] == OPENVLA_BINS and space["normalization_mask"] == [True] * 7 + [False]
    config = {"dataset_statistics": _stats(), "action_space": dict(space)}
    again = ActionCodec.from_policy_config(V, config)
    assert again.tokens.discretization == OPENVLA_BINS and again.normalization_mask.tolist() == [True] * 7 + [False]
    # a checkpoint written before the field existed was trained on 256 equal bins
    older = ActionCodec.from_policy_config(V, {"dataset_statistics": _stats(), "action_space": {}})
    assert older.tokens.discretization == LEGACY_UNIFORM and older.normalization_mask.all()
    with pytest.raises(ValueError, match="normalization_mask"):
        ActionCodec.from_policy_config(V, {"dataset_statistics": _stats(), "action_space": {"normalization_mask": [1]}})
    with pytest.raises(ValueError, match="discretization 'x'"):
        ActionCodec.from_policy_config(V, {"dataset_statistics": _stats(), "action_space": {"discretization": "x"}})


def test_the_instruction_is_lower_cased_whole():
    assert (
        openvla_prompt("Pick UP the Red Cube.")
        == "In: What action should the robot take to pick up the red cube.?\nOut:"
    )


@pytest.fixture(scope="module")
def vla(tmp_path_factory):
    base = materialize_preset("tiny", tmp_path_factory.mktemp("tiny"), image_size=(64, 64))
    return load_vla(str(base), image_size=(64, 64))


def test_the_end_of_sequence_after_the_actions_is_labelled(vla):
    first = vla.vocab_size - 256
    actions = np.array([[first + 5] * 8, [first + 9] * 8])
    batch = build_batch(vla, ["Reach the cube", "reach the red cube now"], actions, "cpu", stop=[True, False])
    eos = vla.tokenizer.eos_token_id
    for row, stopped in enumerate((True, False)):
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE].tolist()
        assert labelled == actions[row].tolist() + ([eos] if stopped else [])
    # the loss counts the end of sequence; accuracy and predictions cover the action tokens only
    width = batch["input_ids"].shape[1]
    logits = torch.zeros((2, width, vla.vocab_size))
    labels = batch["labels"][:, 1:]
    for row, col in (labels != IGNORE).nonzero().tolist():
        logits[row, col, labels[row, col]] = 30.0  # every label predicted with certainty ...
    eos_at = (labels == eos).nonzero().tolist()[0]
    logits[eos_at[0], eos_at[1], eos] = 0.0  # ... except the end of sequence: uniform there
    loss, pred, target, mask = decode.action_loss(logits, batch, first)
    assert int(mask.sum()) == 16 and torch.equal(pred, target)
    assert float(loss) == pytest.approx(np.log(vla.vocab_size) / 17, rel=1e-3)


def test_the_gripper_flag_reaches_the_codec_and_is_for_openvla_only():
    from crane_x7_vla.backends.openvla.trainer import normalization_mask
    from crane_x7_vla.training.cli import build_parser, config_from_args
    from crane_x7_vla.training.config import ConfigError

    def parse(*argv):
        return config_from_args(build_parser().parse_args(["train", *argv]))

    assert parse("--backend", "openvla").normalize_gripper is True
    cfg = parse("--backend", "openvla", "--no-normalize-gripper")
    assert cfg.normalize_gripper is False
    assert normalization_mask(cfg.normalize_gripper).tolist() == [True] * 7 + [False]
    with pytest.raises(ConfigError, match="--no-normalize-gripper is for the openvla backend"):
        parse("--backend", "openpi", "--no-normalize-gripper")
