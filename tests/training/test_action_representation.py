"""Action representation, state in the prompt and no-op filtering: each flag reaches its code,
and training and the deployed policy apply exactly the same transforms."""

import json

import numpy as np
import pytest

from crane_x7_vla import checkpoint_contract as contract
from crane_x7_vla import preprocess, robot
from crane_x7_vla.backends.openvla.action_tokenizer import ActionCodec
from crane_x7_vla.episode.reader import list_episodes, load_episode
from crane_x7_vla.training.cli import build_parser, config_from_args, main
from crane_x7_vla.training.config import ConfigError
from crane_x7_vla.training.data import SampleIndex, load_training_data, moving_steps
from crane_x7_vla.training.metrics import read_metrics
from .tiny_cli import TINY_OPENVLA_CPU

DELTA = preprocess.DELTA_ARM_ABSOLUTE_GRIPPER


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


# ---- flags and defaults ---------------------------------------------------------------------------


def test_flags_reach_the_config():
    cfg = parse(
        "--backend", "openvla", "--action-representation", DELTA, "--state-in-prompt", "--noop-threshold", "0.01"
    )
    assert (cfg.action_representation, cfg.state_in_prompt, cfg.noop_threshold) == (DELTA, True, 0.01)
    cfg = parse(
        "--backend",
        "openvla",
        "--model",
        "tiny",
        "--action-representation",
        "absolute",
        "--no-state-in-prompt",
        "--noop-threshold",
        "0",
    )
    assert (cfg.action_representation, cfg.state_in_prompt, cfg.noop_threshold) == ("absolute", False, 0.0)


def test_defaults_keep_openvla_7b_format_and_tiny_preset_uses_state_and_deltas():
    big = parse("--backend", "openvla")
    assert (big.model, big.action_representation, big.state_in_prompt, big.noop_threshold) == (
        "openvla/openvla-7b",
        "absolute",
        False,
        0.0,
    )
    tiny = parse("--backend", "openvla", "--model", "tiny")
    assert (tiny.action_representation, tiny.state_in_prompt, tiny.noop_threshold) == (DELTA, True, 0.002)
    pi = parse("--backend", "openpi")
    assert (pi.action_representation, pi.noop_threshold) == (DELTA, 0.0)
    # the picture: first for pretrained models, after the instruction for the preset trained from scratch
    assert (big.image_position, tiny.image_position) == ("first", "after_instruction")
    assert not hasattr(pi, "image_position")  # an openvla setting
    assert parse("--backend", "openvla", "--model", "tiny", "--image-position", "first").image_position == "first"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backend", "openpi", "--action-representation", "absolute"], "openpi backend predicts"),
        (["--backend", "openpi", "--state-in-prompt"], "--state-in-prompt is for the openvla backend"),
        (["--backend", "openvla", "--noop-threshold", "-1"], "--noop-threshold"),
        (["--backend", "openpi", "--image-position", "after_instruction"], "--image-position is for the openvla"),
    ],
)
def test_contradictions(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(*argv)


def test_help_lists_the_new_flags():
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(out.getvalue().split())
    for flag in (
        "--action-representation",
        "--state-in-prompt",
        "--no-state-in-prompt",
        "--noop-threshold",
        "--image-position",
    ):
        assert flag in text


# ---- shared transforms ----------------------------------------------------------------------------


def test_delta_round_trip_and_masks():
    rng = np.random.default_rng(0)
    state = rng.normal(size=(5, 8))
    actions = rng.normal(size=(5, 3, 8))
    delta = preprocess.to_delta(actions, state)
    np.testing.assert_allclose(delta[..., :7], actions[..., :7] - state[:, None, :7])
    np.testing.assert_array_equal(delta[..., 7], actions[..., 7])  # gripper stays absolute
    np.testing.assert_allclose(preprocess.to_absolute(delta, state), actions)
    assert not preprocess.delta_mask("absolute").any() and preprocess.delta_mask(DELTA).sum() == robot.NUM_ARM_JOINTS
    with pytest.raises(ValueError, match="unknown action representation"):
        preprocess.delta_mask("velocity")


def test_openpi_uses_the_shared_transforms():
    from crane_x7_vla.backends.openpi import transforms

    assert transforms.to_delta is preprocess.to_delta and transforms.to_absolute is preprocess.to_absolute
    assert transforms.model_action_statistics is preprocess.model_action_statistics
    assert transforms.REPRESENTATION == DELTA


def _stats(dataset_dir):
    return json.loads((dataset_dir / "dataset_statistics.json").read_text())["crane_x7"]


def test_codec_delta_decodes_to_state_plus_bin_centre(dataset_dir):
    stats = _stats(dataset_dir)
    episodes = [load_episode(r.path, images=False) for r in list_episodes(dataset_dir)]
    model_stats = preprocess.model_action_statistics(episodes, 1)
    codec = ActionCodec(1000, stats, representation=DELTA, model_statistics=model_stats, state_in_prompt=True)
    ep = episodes[0]
    ids = codec.encode(ep.action, ep.proprio)
    assert ids.shape == (len(ep), 8) and ids.min() >= codec.first_id and ids.max() < 1000
    back = codec.decode(ids, ep.proprio)
    assert back.shape == (len(ep), 1, 8)  # a chunk of one step
    back = back[:, 0]
    # error at most half a bin of the delta range (arm) / of the action range (gripper)
    half_bin = (
        np.array(model_stats["q99"]) - np.array(model_stats["q01"])
    ) / 255 / 2 + 1e-9  # 255 bins between 256 edges
    inside = np.all(
        (preprocess.to_delta(ep.action[:, None], ep.proprio)[:, 0] >= model_stats["q01"])
        & (preprocess.to_delta(ep.action[:, None], ep.proprio)[:, 0] <= model_stats["q99"]),
        axis=1,
    )
    assert inside.any()
    assert np.all(np.abs(back - ep.action)[inside] <= half_bin)
    # the same token decodes to a different absolute target when the state differs (arm only)
    shifted = ep.proprio + 0.1
    moved = codec.decode(ids, shifted)[:, 0] - back
    np.testing.assert_allclose(moved[:, :7], 0.1, atol=1e-6)
    np.testing.assert_allclose(moved[:, 7], 0.0, atol=1e-6)
    # state tokens: the proprio normaliser with the action bins
    state_ids = codec.state_ids(ep.proprio)
    expected = codec.tokens.ids_of_normalized(preprocess.Normalizer.from_stats(stats, "proprio").normalize(ep.proprio))
    np.testing.assert_array_equal(state_ids, expected)
    assert ActionCodec(1000, stats).state_ids(ep.proprio) is None


def test_codec_chunks_are_step_after_step_relative_to_the_current_state(dataset_dir):
    """--action-horizon H for openvla: 8 tokens per chunk step, each step a delta from the
    SAME observed state, decoded back to (B, H, 8) absolute targets."""
    stats = _stats(dataset_dir)
    episodes = [load_episode(r.path, images=False) for r in list_episodes(dataset_dir)]
    model_stats = preprocess.model_action_statistics(episodes, 4)
    codec = ActionCodec(1000, stats, representation=DELTA, model_statistics=model_stats)
    ep = episodes[0]
    idx = np.minimum(np.arange(len(ep))[:, None] + np.arange(4)[None], len(ep) - 1)
    chunks = ep.action[idx]  # (T, 4, 8)
    ids = codec.encode(chunks, ep.proprio)
    assert ids.shape == (len(ep), 32)
    # step k of the chunk is tokens 8k..8k+7, the same tokens a one-step chunk of that action gives
    np.testing.assert_array_equal(ids[:, 16:24], codec.encode(chunks[:, 2], ep.proprio))
    back = codec.decode(ids, ep.proprio)
    assert back.shape == (len(ep), 4, 8)
    half_bin = (
        np.array(model_stats["q99"]) - np.array(model_stats["q01"])
    ) / 255 / 2 + 1e-9  # 255 bins between 256 edges
    delta = preprocess.to_delta(chunks, ep.proprio)
    inside = np.all((delta >= model_stats["q01"]) & (delta <= model_stats["q99"]), axis=2)
    assert inside.any()
    assert np.all(np.abs(back - chunks)[inside] <= half_bin)


def test_noop_steps_are_left_out(dataset_dir):
    data = load_training_data(dataset_dir, val_ratio=0.0)
    ep = data.train[0]
    ep.action = ep.action.copy()
    ep.action[:4] = ep.proprio[:4]  # standing still at the start
    keep = moving_steps(ep, 0.001)
    # the generated episodes move during steps 0..13 and hold still after that
    assert keep.tolist() == list(range(4, 14)), keep
    np.testing.assert_array_equal(moving_steps(ep, 0.0), np.arange(len(ep)))
    index = SampleIndex([ep], 4, seed=0, noop_threshold=0.001)
    assert sorted(t for _, t in index.pairs) == keep.tolist()
    from crane_x7_vla.episode.reader import DatasetError

    with pytest.raises(DatasetError, match="--noop-threshold"):
        SampleIndex([ep], 4, seed=0, noop_threshold=100.0)


# ---- training and the deployed policy -------------------------------------------------------------

COMMON = TINY_OPENVLA_CPU + [
    "--batch-size",
    "4",
    "--val-ratio",
    "0.2",
    "--learning-rate",
    "3e-3",
    "--logging-steps",
    "1",
    "--eval-samples",
    "8",
    "--num-workers",
    "1",
    "--seed",
    "5",
    "--no-use-lora",
]


@pytest.fixture(scope="module")
def delta_run(dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("delta_run")
    rc = main(
        COMMON
        + [
            "--data-root",
            str(dataset_dir),
            "--output-dir",
            str(out),
            "--max-steps",
            "6",
            "--save-steps",
            "3",
            "--noop-threshold",
            "0.001",
        ]
    )
    assert rc == 0
    return out


def test_checkpoint_records_representation_and_statistics(delta_run, dataset_dir):
    cfg = contract.read_policy_config(delta_run / "checkpoint-final")
    space = cfg["action_space"]
    assert space["representation"] == DELTA and space["delta_mask"] == [True] * 7 + [False]
    assert cfg["openvla"]["state_in_prompt"] is True
    assert cfg["openvla"]["image_position"] == "after_instruction"
    assert cfg["train_config"]["noop_threshold"] == 0.001 and cfg["train_config"]["action_representation"] == DELTA
    data = load_training_data(dataset_dir, val_ratio=0.2, seed=5)
    assert space["model_statistics"] == preprocess.model_action_statistics(data.train, 1)
    assert all(np.isfinite(r["val/l1"]) for r in read_metrics(delta_run) if "val/l1" in r)


def test_policy_prompt_and_actions_match_training(delta_run, dataset_dir):
    import torch

    from crane_x7_vla.backends.openvla import policy as vla_policy
    from crane_x7_vla.backends.openvla.model import build_batch
    from crane_x7_vla.backends.openvla.prompt import split_at_question
    from crane_x7_vla.backends.openvla.trainer import make_codec
    from crane_x7_vla.episode import jpeg
    from crane_x7_vla.training.config import TrainConfig

    d = delta_run / "checkpoint-final"
    config = contract.read_policy_config(d)
    pol = vla_policy.load(d, config, "cpu")
    train_cfg = TrainConfig.from_dict(config["train_config"])
    data = load_training_data(dataset_dir, val_ratio=0.2, seed=5)
    trained = make_codec(train_cfg, data, pol.vla.vocab_size, None)
    ep = load_episode(list_episodes(dataset_dir)[0].path)
    # the codec rebuilt from the checkpoint equals the one training used
    for a, s in ((ep.action, ep.proprio), (ep.action[::-1], ep.proprio + 0.05)):
        np.testing.assert_array_equal(trained.encode(a, s), pol.codec.encode(a, s))
        np.testing.assert_array_equal(trained.state_ids(s), pol.codec.state_ids(s))
        ids = trained.encode(a, s)
        np.testing.assert_allclose(trained.decode(ids, s), pol.codec.decode(ids, s))

    seen = []
    hook = pol.vla.model.register_forward_pre_hook(
        lambda mod, args, kwargs: (
            seen.append(kwargs["input_ids"].clone()) if kwargs.get("pixel_values") is not None else None
        ),
        with_kwargs=True,
    )
    t = 5
    obs = {
        "images": {"primary": jpeg.decode(ep.images["primary"][t])},
        "state": ep.proprio[t],
        "instruction": ep.instruction,
    }
    try:
        action = pol.predict(obs)
    finally:
        hook.remove()
    # the prompt at deployment is the training prompt: instruction + the 8 state tokens
    train_prompt = build_batch(pol.vla, [ep.instruction], None, "cpu", trained.state_ids(ep.proprio[t : t + 1]))
    assert torch.equal(seen[0][0], train_prompt["input_ids"][0])
    state_ids = trained.state_ids(ep.proprio[t : t + 1])[0].tolist()
    prompt = seen[0][0].tolist()
    at = next(i for i in range(len(prompt)) if prompt[i : i + 8] == state_ids)
    assert pol.vla.tokenizer.decode(prompt[:at]).endswith("State:")
    # the picture follows the instruction's question, so it is read knowing what is named
    image = pol.vla.image_token_id
    first_image = prompt.index(image)
    assert pol.vla.tokenizer.decode(prompt[:first_image]).endswith(split_at_question(ep.instruction, True)[0])
    assert prompt.count(image) == pol.vla.num_image_tokens and first_image + pol.vla.num_image_tokens < at
    # the arm's prediction is the observed state plus a delta bin centre; the gripper is absolute
    delta = action[0] - np.where(preprocess.DELTA_MASK, ep.proprio[t], 0.0)
    norm = preprocess.Normalizer.from_stats({"action": config["action_space"]["model_statistics"]}, "action")
    centres = pol.codec.tokens.centers
    bins = norm.normalize(delta)
    assert np.all(np.min(np.abs(bins[:, None] - centres[None]), axis=1) < 1e-4)
    with pytest.raises(KeyError, match="state"):
        pol.predict({"images": obs["images"], "instruction": "x"})
    with pytest.raises(ValueError, match="finite"):
        pol.predict({**obs, "state": np.full(8, np.nan)})


def test_resume_refuses_another_representation(delta_run, dataset_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            COMMON
            + [
                "--data-root",
                str(dataset_dir),
                "--output-dir",
                str(tmp_path / "o"),
                "--max-steps",
                "6",
                "--action-representation",
                "absolute",
                "--resume-from-checkpoint",
                str(delta_run / "checkpoint-3"),
            ]
        )
    assert "resume with the same" in capsys.readouterr().err


def test_only_llava_family_models_take_the_picture_after_the_instruction():
    import torch

    from crane_x7_vla.backends.openvla.model import VLA, ModelError, set_image_position

    vla = VLA(
        model=torch.nn.Linear(1, 1),
        tokenizer=None,
        family="paligemma",
        source="google/paligemma-3b-pt-224",
        image_size=(224, 224),
        image_token_id=257152,
        num_image_tokens=256,
        pixel_stats=[],
        cache_kw="past_key_values",
        dtype=torch.float32,
    )
    with pytest.raises(ModelError, match="needs a Llava-family model.*paligemma"):
        set_image_position(vla, "after_instruction")
    assert vla.image_position == "first"
    with pytest.raises(ModelError, match="unknown"):
        set_image_position(vla, "last")
    vla.family = "llava"
    set_image_position(vla, "after_instruction")
    assert vla.image_position == "after_instruction"


def test_prompt_tokens_are_remembered_and_stay_the_tokenizers(tmp_path):
    from crane_x7_vla.backends.openvla import model as m

    vla = m.load_vla(str(m.materialize_preset("tiny", tmp_path / "base", image_size=(64, 64))), image_size=(64, 64))
    text = "What action should the robot take to reach the red cube?"
    expected = vla.tokenizer(text, add_special_tokens=False)["input_ids"]
    first = m.text_ids(vla, text)
    assert first == expected and text in vla.text_cache
    first.append(-1)  # a caller extending its list must not change the remembered ids
    assert m.text_ids(vla, text) == expected
    state = np.arange(8) + 5
    batch = m.build_batch(vla, [text, text], np.full((2, 4), 7), "cpu", np.stack([state, state]))
    fresh = m.build_batch(
        m.load_vla(vla.source, image_size=(64, 64)), [text, text], np.full((2, 4), 7), "cpu", np.stack([state, state])
    )
    for key in ("input_ids", "attention_mask", "labels"):  # row 0 from the tokenizer, row 1 remembered
        assert fresh[key][0].tolist() == fresh[key][1].tolist(), key
        assert batch[key].tolist() == fresh[key].tolist(), key
    for i in range(m.TEXT_CACHE_SIZE + 1):  # bounded: a stream of new instructions does not grow it without end
        m.text_ids(vla, f"reach cube {i}")
    assert len(vla.text_cache) <= m.TEXT_CACHE_SIZE
