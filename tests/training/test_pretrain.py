"""The vision stage of the tiny preset: questions point where the named object is, the
stage changes the vision tower only, and training takes its output as a base model."""

import json

import numpy as np
import pytest
import torch

from crane_x7_vla.backends.openvla.model import load_vla, materialize_preset, prompt_ids
from crane_x7_vla.sim.pointing import render_scenes
from crane_x7_vla.cli import main as cli_main
from crane_x7_vla.preprocess import ImageSpec
from crane_x7_vla.training.cli import main as train_main

from crane_x7_vla.sim.model import COLOURS


def _colour_at(img, u, v) -> str:
    """Name of the scene colour nearest in chromaticity to the 3x3 pixels around (u, v)."""
    c, r = int(u), int(v)
    rgb = img[r - 1 : r + 2, c - 1 : c + 2].reshape(-1, 3).astype(float).mean(axis=0)
    chroma = lambda x: np.asarray(x, float) / (np.sum(x) + 1e-9)  # noqa: E731
    return min(COLOURS, key=lambda name: np.linalg.norm(chroma(COLOURS[name]) - chroma(rgb)))


@pytest.mark.parametrize("task", ["reach", "pick_place"])
def test_every_question_points_at_its_object_in_the_picture(task):
    spec = ImageSpec(width=160, height=120, crop_scale=1.0, color_jitter=0.0)
    scenes = render_scenes(task, 4, 500_000, spec, np.random.default_rng(0), arm_pose_noise=0.0)
    assert scenes.images.shape == (4, 120, 160, 3)
    kinds = {"cube": 0, "plate": 0}
    for k, text, (u, v) in zip(scenes.scene, scenes.text, scenes.where):
        assert -1 <= u <= 1 and -1 <= v <= 1
        colour, kind = text.removeprefix("point to the ").split()
        kinds[kind] += 1
        assert _colour_at(scenes.images[k], (u + 1) / 2 * 160, (v + 1) / 2 * 120) == colour, (k, text, u, v)
    assert kinds["cube"] >= 4 and (kinds["plate"] >= 4) == (task == "pick_place")


def test_the_stage_trains_the_vision_tower_and_training_loads_it(tmp_path, dataset_dir):
    base = tmp_path / "base"
    assert (
        cli_main(["pretrain", "--out", str(base), "--scenes", "12", "--steps", "6", "--batch-size", "8", "--seed", "3"])
        == 0
    )
    figures = json.loads((base / "pretraining.json").read_text())
    assert (
        figures["preset"] == "tiny" and figures["scenes"] == 12 and figures["steps"] == 6 and figures["questions"] == 36
    )
    assert figures["held_out_questions"] > 0 and 0 <= figures["held_out_error_pixels"] < 64

    fresh = materialize_preset("tiny", tmp_path / "fresh", image_size=(64, 64), seed=3)
    before = load_vla(str(fresh), image_size=(64, 64)).model.state_dict()
    after = load_vla(str(base), image_size=(64, 64)).model.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("vision_backbone.") for k in changed), sorted(changed)[:5]
    assert any(".fused_featurizer." in k for k in changed) and any(".featurizer." in k for k in changed)

    out = tmp_path / "run"
    rc = train_main(
        [
            "train",
            "--backend",
            "openvla",
            "--model",
            str(base),
            "--image-size",
            "64x64",
            "--device",
            "cpu",
            "--batch-size",
            "4",
            "--max-steps",
            "2",
            "--save-steps",
            "2",
            "--no-use-lora",
            "--data-root",
            str(dataset_dir),
            "--output-dir",
            str(out),
        ]
    )
    assert rc == 0
    config = json.loads((out / "checkpoint-final" / "policy_config.json").read_text())
    assert config["base_model"] == str(base) and config["step"] == 2
    # the base model stays in its folder: the checkpoint says where, so loading never asks the model hub for it
    assert config["openvla"]["base_source"] == "directory" and config["openvla"]["base_model_dir"] == str(
        base.resolve()
    )
    # built from the tiny preset, it keeps the preset's training defaults
    assert config["action_space"]["representation"] == "delta_arm_absolute_gripper"
    assert config["train_config"]["state_in_prompt"] is True and config["train_config"]["action_label_sigma"] == 2.0
    # and prompts the picture where the pretraining asked its questions
    assert figures["image_position"] == config["openvla"]["image_position"] == "after_instruction"


def test_bad_flags_name_the_flag(tmp_path, capsys):
    for flags, words in (
        (["--task", "stack"], "argument --task: 'stack' is not a simulated task"),
        (["--steps", "0"], "argument --steps: must be at least 1 (got 0)"),
        (["--answer-steps", "-1"], "argument --answer-steps: must be at least 0 (got -1)"),
        (["--preset", "huge"], "unknown preset 'huge'"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli_main(["pretrain", "--out", str(tmp_path / "m"), *flags])
        assert exc.value.code == 2 and words in capsys.readouterr().err, flags
    assert not (tmp_path / "m").exists()


def test_a_broken_marker_is_named(tmp_path):
    from crane_x7_vla.training.config import ConfigError, TrainConfig

    (tmp_path / "pretraining.json").write_text("{not json")
    with pytest.raises(ConfigError, match="pretraining.json"):
        TrainConfig(model=str(tmp_path), output_dir=str(tmp_path / "o")).resolved()


def test_the_answer_stage_trains_the_language_model_through_the_action_prompt(tmp_path):
    base = tmp_path / "base"
    assert (
        cli_main(
            [
                "pretrain",
                "--out",
                str(base),
                "--scenes",
                "8",
                "--steps",
                "2",
                "--answer-steps",
                "4",
                "--batch-size",
                "4",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    figures = json.loads((base / "pretraining.json").read_text())
    assert figures["answer_steps"] == 4 and figures["image_position"] == "after_instruction"
    assert 0 <= figures["held_out_answer_error_pixels"] < 64 * 1.5
    # the picture follows the instruction, so no lead-in with the colour last is needed
    assert "held_out_lead_in_error_pixels" not in figures
    fresh = materialize_preset("tiny", tmp_path / "fresh", image_size=(64, 64), seed=1)
    before = load_vla(str(fresh), image_size=(64, 64)).model.state_dict()
    after = load_vla(str(base), image_size=(64, 64)).model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("language_model" in k for k in changed) and any(k.startswith("projector.") for k in changed)


def test_lead_in_questions_end_with_the_colour_and_skip_the_template(tmp_path):
    spec = ImageSpec(width=64, height=64, crop_scale=1.0, color_jitter=0.0)
    scenes = render_scenes("reach", 2, 500_000, spec, np.random.default_rng(0), arm_pose_noise=0.0)
    vla = load_vla(str(materialize_preset("tiny", tmp_path / "m", image_size=(64, 64))), image_size=(64, 64))
    for text, lead in zip(scenes.text, scenes.lead_in):
        colour, kind = text.removeprefix("point to the ").split()
        assert lead == f"point to the {kind} {colour}"
        bare = prompt_ids(vla, lead, bare=True)
        assert vla.tokenizer.decode(bare[-1:]).strip() == colour  # the answer follows the colour
        assert len(prompt_ids(vla, text)) > len(bare)  # the action prompt wraps it in the template
