"""Goal tokens: the goal point (where the hand is at the end of the current movement) from the
recorded joints, its 3 tokens before the actions, goal-only pictures from the simulator, and
the same codec in training and in the deployed policy."""

import json

import numpy as np
import pytest

from crane_x7_vla import checkpoint_contract as contract
from crane_x7_vla import preprocess, robot
from crane_x7_vla.backends.openvla.action_tokenizer import ActionCodec
from crane_x7_vla.episode.reader import EpisodeData, list_episodes, load_episode
from crane_x7_vla.training.cli import build_parser, config_from_args, main
from crane_x7_vla.training.config import ConfigError
from crane_x7_vla.training.metrics import read_metrics
from .tiny_cli import TINY_OPENVLA_CPU

DELTA = preprocess.DELTA_ARM_ABSOLUTE_GRIPPER
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


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_tool_centre_point_is_the_simulated_arms():
    from crane_x7_vla.sim import SimEnv

    env = SimEnv(task="reach", seed=0, cameras=("primary",))
    rng = np.random.default_rng(0)
    try:
        poses, sim_tcp = [], []
        for _ in range(5):
            env.pose_arm(robot.HOME_POSE + rng.uniform(-0.6, 0.6, 7))
            poses.append(env.joint_positions())
            sim_tcp.append(env.data.site("tcp").xpos.copy())
    finally:
        env.close()
    np.testing.assert_allclose(robot.tool_centre_point(np.array(poses)), np.array(sim_tcp), atol=1e-9)
    assert robot.tool_centre_point(poses[0]).shape == (3,)


def test_goal_point_is_the_next_grasp_release_or_the_end():
    T = 30
    proprio = np.tile(robot.home_state(), (T, 1))
    proprio[:, 0] = np.linspace(-0.5, 0.5, T)  # the base turns, so every step's hand is elsewhere
    action = np.vstack([proprio[1:], proprio[-1:]])
    np.testing.assert_array_equal(preprocess.keyframes(action), [T - 1])  # reach: the end only
    action[8:12, 7] = np.linspace(robot.GRIPPER_OPEN, robot.GRIPPER_CLOSED, 5)[1:]  # close: starts between 7 and 8
    action[12:20, 7] = robot.GRIPPER_CLOSED
    action[20:, 7] = robot.GRIPPER_OPEN  # release: between 19 and 20
    np.testing.assert_array_equal(preprocess.keyframes(action), [7, 19, T - 1])
    goals = preprocess.goal_points(proprio, action)
    tcp = robot.tool_centre_point(proprio)
    np.testing.assert_allclose(goals[:8], np.tile(tcp[7], (8, 1)))
    np.testing.assert_allclose(goals[8:20], np.tile(tcp[19], (12, 1)))
    np.testing.assert_allclose(goals[20:], np.tile(tcp[-1], (T - 20, 1)))
    for t in (0, 7, 8, 25):
        np.testing.assert_allclose(preprocess.goal_point(proprio, action, t), goals[t])


def test_codec_writes_the_goal_first_and_decodes_actions_as_without_it(dataset_dir):
    stats = json.loads((dataset_dir / "dataset_statistics.json").read_text())["crane_x7"]
    episodes = [load_episode(r.path, images=False) for r in list_episodes(dataset_dir)]
    model_stats = preprocess.model_action_statistics(episodes, 2)
    plain = ActionCodec(1000, stats, representation=DELTA, model_statistics=model_stats)
    with_goal = ActionCodec(1000, stats, representation=DELTA, model_statistics=model_stats, goal_tokens=True)
    ep = episodes[0]
    chunks = ep.action[np.minimum(np.arange(len(ep))[:, None] + np.arange(2), len(ep) - 1)]
    goals = preprocess.goal_points(ep.proprio, ep.action)
    ids = with_goal.encode(chunks, ep.proprio, goals)
    assert ids.shape == (len(ep), 3 + 16) and with_goal.n_tokens(2) == 19 and plain.n_tokens(2) == 16
    np.testing.assert_array_equal(ids[:, 3:], plain.encode(chunks, ep.proprio))
    np.testing.assert_allclose(with_goal.decode(ids, ep.proprio), plain.decode(ids[:, 3:], ep.proprio))
    half_bin = (preprocess.GOAL_BOUNDS[1] - preprocess.GOAL_BOUNDS[0]) / 255 / 2 + 1e-9  # 255 bins between 256 edges
    assert np.all(np.abs(with_goal.decode_goal(ids) - goals) <= half_bin)
    assert plain.decode_goal(ids) is None
    with pytest.raises(ValueError, match="goal point"):
        with_goal.encode(chunks, ep.proprio)


def test_goal_only_samples_train_the_goal_tokens_only(dataset_dir):
    from crane_x7_vla.backends.openvla.inputs import label_ids

    stats = json.loads((dataset_dir / "dataset_statistics.json").read_text())["crane_x7"]
    codec = ActionCodec(1000, stats, goal_tokens=True)
    ep = load_episode(list_episodes(dataset_dir)[0].path, images=False)
    batch = {
        "actions": ep.action[:3, None],
        "state": ep.proprio[:3],
        "goal": np.zeros((3, 3)) + 0.1,
        "goal_only": np.array([False, True, False]),
    }
    rows = label_ids(codec, batch)
    assert [len(r) for r in rows] == [11, 3, 11]
    np.testing.assert_array_equal(rows[1], rows[0][:3])


def test_goal_scenes_show_the_task_and_label_the_named_cube():
    from crane_x7_vla.episode import jpeg
    from crane_x7_vla.sim import SimEnv
    from crane_x7_vla.sim.goal_scenes import GOAL_SCENES_FIRST_SEED, goal_scenes

    scenes = goal_scenes("reach", 4, ["primary"], camera_size=(80, 60))
    env = SimEnv(task="reach", seed=GOAL_SCENES_FIRST_SEED, cameras=("primary",))
    try:
        for k, scene in enumerate(scenes):
            env.reset(GOAL_SCENES_FIRST_SEED + k)
            assert scene.instruction == env.instruction
            np.testing.assert_allclose(scene.goal, env.cube_position(env.layout.target_cube))
            assert jpeg.size_of(scene.images["primary"][0]) == (80, 60) and len(scene) == 1
    finally:
        env.close()
    moved = [not np.allclose(s.proprio[0, :7], robot.HOME_POSE, atol=0.05) for s in scenes]
    assert any(moved)  # some pictures show the arm elsewhere, as during a demonstration
    with pytest.raises(ValueError, match="the simulator's cameras"):
        goal_scenes("reach", 1, ["side"])


def test_goal_scenes_alone_hide_the_other_cubes():
    from crane_x7_vla.episode import jpeg
    from crane_x7_vla.sim import SimEnv
    from crane_x7_vla.sim.goal_scenes import GOAL_SCENES_FIRST_SEED, goal_scenes

    size = (160, 120)
    full = goal_scenes("reach", 4, ["primary"], camera_size=size)
    half = goal_scenes("reach", 4, ["primary"], camera_size=size, alone=0.5)
    env = SimEnv(task="reach", seed=GOAL_SCENES_FIRST_SEED, cameras=("primary",))

    def patch(img, uv):  # mean colour of a 5x5 patch around a pixel
        c, r = np.round(uv).astype(int)
        return img[r - 2 : r + 3, c - 2 : c + 3].reshape(-1, 3).astype(float).mean(0)

    try:
        for k, (a, b) in enumerate(zip(full, half)):
            assert (a.instruction, a.goal.tolist()) == (b.instruction, b.goal.tolist())  # same scene, same label
            np.testing.assert_array_equal(a.proprio, b.proprio)
            img_a, img_b = (jpeg.decode(x.images["primary"][0]).astype(float) for x in (a, b))
            if k % 2 == 0:  # every second scene (a share of 0.5) shows the named cube alone
                np.testing.assert_array_equal(img_a, img_b)
                continue
            env.reset(GOAL_SCENES_FIRST_SEED + k)
            for i in range(len(env.layout.cube_colours)):
                uv = env.project("primary", env.cube_position(i), *size)
                change = np.abs(patch(img_a, uv) - patch(img_b, uv)).max()
                if i == env.layout.target_cube:
                    assert change < 20, (k, i, change)  # the named cube is still there
                else:
                    assert change > 40, (k, i, change)  # the others are gone
    finally:
        env.close()
    with pytest.raises(ValueError, match="0..1"):
        goal_scenes("reach", 1, ["primary"], alone=1.5)


def test_goal_scenes_near_put_the_hand_by_a_cube_and_keep_the_named_cubes_label():
    from crane_x7_vla.sim import SimEnv
    from crane_x7_vla.sim.goal_scenes import GOAL_SCENES_FIRST_SEED, goal_scenes
    from crane_x7_vla.sim.poses import NEAR_HEIGHT, NEAR_OFFSET
    from crane_x7_vla.sim.ik import ArmIK

    n = 16
    plain = goal_scenes("reach", n, ["primary"], camera_size=(64, 64))
    near = goal_scenes("reach", n, ["primary"], camera_size=(64, 64), near=1.0)
    env = SimEnv(task="reach", seed=GOAL_SCENES_FIRST_SEED, cameras=("primary",))
    ik = ArmIK(env.model)
    by_named = 0
    try:
        for k, (a, b) in enumerate(zip(plain, near)):
            assert (a.instruction, a.goal.tolist()) == (b.instruction, b.goal.tolist())  # same scene, same label
            env.reset(GOAL_SCENES_FIRST_SEED + k)
            tip, _ = ik.forward(b.proprio[0, :7].astype(float), float(b.proprio[0, 7]))
            cubes = [env.cube_position(i) for i in range(len(env.layout.cube_colours))]
            closest = min(range(len(cubes)), key=lambda i: np.linalg.norm(tip[:2] - cubes[i][:2]))
            beside, above = np.abs(tip[:2] - cubes[closest][:2]).max(), tip[2] - cubes[closest][2]
            assert beside < NEAR_OFFSET + 0.01 and NEAR_HEIGHT[0] - 0.01 < above < NEAR_HEIGHT[1] + 0.01, (k, tip)
            by_named += closest == env.layout.target_cube
    finally:
        env.close()
    assert 0 < by_named < n  # by the named cube and by the others
    with pytest.raises(ValueError, match="0..1"):
        goal_scenes("reach", 1, ["primary"], near=-0.1)


def test_flags_defaults_and_contradictions():
    assert parse("--backend", "openvla").goal_tokens is False  # OpenVLA-7B's format
    assert parse("--backend", "openvla", "--model", "tiny").goal_tokens is False  # no gain without a pretrained tower
    cfg = parse(
        "--backend",
        "openvla",
        "--model",
        "tiny",
        "--goal-tokens",
        "--goal-scenes",
        "50",
        "--goal-scenes-task",
        "pick_place",
        "--goal-scenes-alone",
        "0.25",
        "--goal-scenes-near",
        "0.5",
    )
    assert (cfg.goal_tokens, cfg.goal_scenes, cfg.goal_scenes_task) == (True, 50, "pick_place")
    assert (cfg.goal_scenes_alone, cfg.goal_scenes_near) == (0.25, 0.5)
    for argv, message in (
        (["--backend", "openpi", "--goal-tokens"], "openvla backend"),
        (["--backend", "openvla", "--model", "tiny", "--goal-scenes", "5"], "needs --goal-tokens"),
        (["--backend", "openvla", "--goal-scenes", "-1"], "--goal-scenes"),
        (
            ["--backend", "openvla", "--goal-tokens", "--goal-scenes", "5", "--goal-scenes-alone", "2"],
            "--goal-scenes-alone",
        ),
        (
            ["--backend", "openvla", "--goal-tokens", "--goal-scenes", "5", "--goal-scenes-near", "-1"],
            "--goal-scenes-near",
        ),
    ):
        with pytest.raises(ConfigError, match=message):
            parse(*argv)


@pytest.fixture(scope="module")
def goal_run(dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("goal_run")
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
            "--goal-tokens",
            "--goal-scenes",
            "12",
            "--goal-scenes-alone",
            "0.5",
        ]
    )
    assert rc == 0
    return out


def test_checkpoint_and_policy_carry_the_goal(goal_run, dataset_dir):
    from crane_x7_vla.backends.openvla import policy as vla_policy
    from crane_x7_vla.backends.openvla.trainer import make_codec
    from crane_x7_vla.episode import jpeg
    from crane_x7_vla.training.config import TrainConfig
    from crane_x7_vla.training.data import load_training_data

    d = goal_run / "checkpoint-final"
    config = contract.read_policy_config(d)
    assert config["openvla"]["goal_tokens"] is True and config["openvla"]["action_token_count"] == 3 + 8
    assert config["train_config"]["goal_scenes"] == 12 and config["train_config"]["goal_scenes_alone"] == 0.5
    final_eval = [r for r in read_metrics(goal_run) if "val/goal_error_m" in r]
    assert final_eval and np.isfinite(final_eval[-1]["val/goal_error_m"])
    assert 0 <= final_eval[-1]["val/first_goal_error_m"] < 2.0  # the goal box is 0.8 x 0.9 x 0.7 m
    pol = vla_policy.load(d, config, "cpu")
    assert pol.metadata["goal_tokens"] is True and pol.last_goal is None
    ep = load_episode(list_episodes(dataset_dir)[0].path)
    # the codec rebuilt from the checkpoint is the one training used
    trained = make_codec(
        TrainConfig.from_dict(config["train_config"]),
        load_training_data(dataset_dir, val_ratio=0.2, seed=5),
        pol.vla.vocab_size,
        None,
    )
    goals = preprocess.goal_points(ep.proprio, ep.action)
    ids = trained.encode(ep.action, ep.proprio, goals)
    np.testing.assert_array_equal(ids, pol.codec.encode(ep.action, ep.proprio, goals))
    np.testing.assert_allclose(trained.decode_goal(ids), pol.codec.decode_goal(ids))
    action = pol.predict(
        {
            "images": {"primary": jpeg.decode(ep.images["primary"][0])},
            "state": ep.proprio[0],
            "instruction": ep.instruction,
        }
    )
    assert action.shape == (1, 8) and np.all(np.isfinite(action))
    lo, hi = preprocess.GOAL_BOUNDS
    assert pol.last_goal.shape == (3,) and np.all((pol.last_goal >= lo) & (pol.last_goal <= hi))


def test_goal_is_written_before_the_state_is_read(goal_run, dataset_dir):
    import torch

    from crane_x7_vla.backends.openvla import decode
    from crane_x7_vla.backends.openvla import policy as vla_policy
    from crane_x7_vla.backends.openvla.model import build_batch, pixel_values
    from crane_x7_vla.episode import jpeg
    from crane_x7_vla.preprocess import prepare_image

    d = goal_run / "checkpoint-final"
    config = contract.read_policy_config(d)
    assert config["openvla"]["goal_before_state"] is True  # the tiny preset's default with goal tokens
    pol = vla_policy.load(d, config, "cpu")
    assert pol.codec.goal_first == 3 and pol.metadata["goal_before_state"] is True
    ep = load_episode(list_episodes(dataset_dir)[0].path)
    t = 4
    image = jpeg.decode(ep.images["primary"][t])
    state = ep.proprio[t : t + 1]
    state_ids = pol.codec.state_ids(state)[0].tolist()
    calls = []
    hook = pol.vla.model.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(kwargs["input_ids"][0].tolist()), with_kwargs=True
    )
    try:
        action = pol.predict({"images": {"primary": image}, "state": ep.proprio[t], "instruction": ep.instruction})
    finally:
        hook.remove()
    tok = pol.vla.tokenizer
    # the prompt ends asking for the goal and holds no state; the state is fed after the third goal token
    assert tok.decode(calls[0]).rstrip().endswith("Goal:")
    assert not any(calls[0][i : i + 8] == state_ids for i in range(len(calls[0])))
    fed = [c for c in calls[1:] if len(c) > 1]
    assert len(fed) == 1 and fed[0][-8 - len(tok("\nOut:", add_special_tokens=False)["input_ids"]) :][:8] == state_ids
    assert calls.index(fed[0]) == 3  # prompt, goal token 1, goal token 2, then goal token 3 + the state
    # decoding follows the training layout: teacher-forced on what was written, every written
    # token is the greedy choice there
    pix = pixel_values(pol.vla, {"primary": prepare_image(image, pol.spec, train=False)[None]}, ["primary"], "cpu")
    prompt = build_batch(pol.vla, [ep.instruction], None, "cpu", pol.codec.state_ids(state), goal_first=3)
    written = decode.generate_action_ids(
        pol.vla.model, pol.vla, prompt, pix, pol.codec.n_tokens(1), pol.codec.first_id, middle_after=3
    ).numpy()
    np.testing.assert_allclose([robot.clamp_to_limits(a) for a in pol.codec.decode(written, state)[0]], action)
    inputs = build_batch(pol.vla, [ep.instruction], written, "cpu", pol.codec.state_ids(state), goal_first=3)
    with torch.no_grad():
        logits = decode.forward(pol.vla.model, pol.vla, inputs, pix).logits
    labelled = inputs["labels"][0, 1:] != -100
    pred = decode.next_token_logits(logits, inputs["input_ids"].shape[1])[0][labelled]
    first = pol.codec.first_id
    np.testing.assert_array_equal(pred[:, first:].argmax(-1).numpy() + first, written[0])
    # the goal's logits do not depend on the state; the actions' do
    other = build_batch(pol.vla, [ep.instruction], written, "cpu", pol.codec.state_ids(state + 0.3), goal_first=3)
    with torch.no_grad():
        pred2 = decode.next_token_logits(
            decode.forward(pol.vla.model, pol.vla, other, pix).logits, other["input_ids"].shape[1]
        )[0][labelled]
    torch.testing.assert_close(pred2[:3], pred[:3])
    assert not torch.allclose(pred2[3:], pred[3:])
    # a checkpoint written before this layout existed keeps the state first
    old = json.loads(json.dumps(config))
    del old["openvla"]["goal_before_state"]
    assert ActionCodec.from_policy_config(pol.vla.vocab_size, old).goal_first == 0


def test_resume_refuses_another_goal_setting(goal_run, dataset_dir, tmp_path, capsys):
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
                "--resume-from-checkpoint",
                str(goal_run / "checkpoint-3"),
            ]
        )
    assert "--goal-tokens" in capsys.readouterr().err


def test_freeze_vision_trains_everything_but_the_image_encoder(tmp_path):
    import torch

    from crane_x7_vla.backends.openvla.model import materialize_preset
    from crane_x7_vla.backends.openvla.trainer import build_model

    src = materialize_preset("tiny", tmp_path / "base", image_size=(64, 64))
    for freeze in (True, False):
        cfg = parse(
            "--backend",
            "openvla",
            "--model",
            str(src),
            "--image-size",
            "64x64",
            "--no-use-lora",
            *(["--freeze-vision"] if freeze else []),
        ).resolved()
        vla = build_model(cfg, str(src), torch.device("cpu"), None)
        frozen = [n for n, p in vla.model.named_parameters() if not p.requires_grad]
        # the layers OpenVLA's forward pass never runs (each tower's last block and norm, SigLIP's pool)
        # stay as they are
        unused = tuple(f"{n}." for n in vla.model.unused_modules())
        if freeze:
            assert frozen and all(n.startswith("vision_backbone.") for n in frozen)
            assert any(n.startswith("vision_backbone.") and not n.startswith(unused) for n in frozen)
            assert any(p.requires_grad for n, p in vla.model.named_parameters() if "language_model" in n)
        else:
            assert frozen and all(n.startswith(unused) for n in frozen)


def test_first_goal_error_is_taken_on_each_episodes_first_picture():
    from crane_x7_vla.training.data import eval_items

    eps = [
        EpisodeData(
            path=None,
            proprio=np.zeros((n, 8), np.float32),
            action=np.zeros((n, 8), np.float32),
            timestep=np.arange(n),
            timestamp_ns=None,
            instruction="reach the red cube",
            images={},
        )
        for n in (4, 0, 6, 3)
    ]
    assert eval_items(eps, 100, first_steps=True) == [(0, 0), (2, 0), (3, 0)]
    assert eval_items(eps, 2, first_steps=True) == [(0, 0), (3, 0)]
    assert len(eval_items(eps, 100)) == 13


def test_goal_warmup_trains_on_the_goal_scenes_first_and_resumes_exactly(dataset_dir, tmp_path):
    args = COMMON + [
        "--data-root",
        str(dataset_dir),
        "--max-steps",
        "6",
        "--save-steps",
        "2",
        "--goal-tokens",
        "--goal-scenes",
        "12",
        "--goal-warmup-steps",
        "3",
        "--goal-warmup-lr",
        "1e-3",
    ]
    straight = tmp_path / "straight"
    assert main(args + ["--output-dir", str(straight)]) == 0
    rows = {r["step"]: r for r in read_metrics(straight) if "train/loss" in r}
    assert sorted(rows) == list(range(1, 7))
    # warm-up: goal scenes only, so no sample has actions (the L1 of the actions is over none)
    assert all(rows[s]["train/l1"] == 0.0 for s in (1, 2, 3))
    assert all(rows[s]["train/l1"] > 0.0 for s in (4, 5, 6))
    # at its own constant rate; then the schedule of --learning-rate 3e-3 starts
    assert [rows[s]["train/learning_rate"] for s in (1, 2, 3)] == [1e-3] * 3
    lr = {s: rows[s]["train/learning_rate"] for s in rows}
    assert lr[4] == pytest.approx(3e-3) and lr[6] < lr[4]
    state = json.loads((straight / "checkpoint-2" / "trainer_state.json").read_text())
    assert "goal_warmup_position" in state
    # resumed inside the warm-up, the run continues as the uninterrupted one did
    resumed = tmp_path / "resumed"
    assert main(args + ["--output-dir", str(resumed), "--resume-from-checkpoint", str(straight / "checkpoint-2")]) == 0
    again = {r["step"]: r["train/loss"] for r in read_metrics(resumed) if "train/loss" in r}
    assert sorted(again) == list(range(3, 7))
    np.testing.assert_allclose([again[s] for s in again], [rows[s]["train/loss"] for s in again], rtol=1e-6)
    with pytest.raises(ConfigError, match="fewer than --max-steps"):
        parse(
            "--backend",
            "openvla",
            "--goal-tokens",
            "--goal-scenes",
            "5",
            "--goal-warmup-steps",
            "6",
            "--max-steps",
            "6",
        )
    with pytest.raises(ConfigError, match="needs --goal-scenes"):
        parse("--backend", "openvla", "--goal-tokens", "--goal-warmup-steps", "2")
