"""A checkpoint in OpenVLA's published layout fine-tuned with LoRA through the documented
commands, exported back to that layout with `merge-lora`, and served as it is: the tokens
our policy writes for a published folder are those of OpenVLA's predict_action (written out
in this file from its published definition)."""

import json

import numpy as np
import pytest
import torch

from crane_x7_vla import robot
from crane_x7_vla.training.cli import main

from . import openvla_layout as layout


def crane_stats(dim: int = 8) -> dict:
    """norm_stats with one 8-dimensional entry whose gripper is left out of the normalisation."""
    lo = np.concatenate([robot.LOWER_LIMITS[:7] * 0.5, [0.2]])
    hi = np.concatenate([robot.UPPER_LIMITS[:7] * 0.5, [1.1]])
    action = {"q01": lo.tolist(), "q99": hi.tolist(), "mask": [True] * 7 + [False]}
    return {"crane_x7": {"action": action, "proprio": {"q01": lo.tolist(), "q99": hi.tolist()}}}


def openvla_predict_action(model, tokenizer, image: np.ndarray, instruction: str, norm_stats: dict, key: str,
                           restrict: bool = False):
    """OpenVLA's processor + predict_action: the picture resized (PIL bicubic) to 224 and
    normalised per tower with the processor's tvf_normalize_params, the prompt
    'In: What action should the robot take to {instruction.lower()}?\\nOut:' with <s> and the
    space token appended, 7/8 greedy steps over the whole vocabulary (fewer when `</s>` is
    written: the last 7/8 ids of prompt and written tokens are read), token t -> bin centre
    clip(vocab - t - 1, 0, 254), un-normalised with q01/q99 where the mask is set. `restrict`:
    each step's argmax over the 256 action tokens only (as our trainer's policies decode)."""
    from PIL import Image

    img = Image.fromarray(image).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
    pix = torch.cat([(x - torch.tensor(m)[:, None, None]) / torch.tensor(s)[:, None, None]
                     for m, s in layout.TVF_STATS])[None]
    ids = tokenizer(f"In: What action should the robot take to {instruction.lower()}?\nOut:",
                    return_tensors="pt").input_ids
    space = tokenizer.convert_tokens_to_ids("\u2581")
    if ids[0, -1] != space:
        ids = torch.cat([ids, torch.tensor([[space]])], dim=1)
    stats = norm_stats[key]["action"]
    dim = len(stats["q01"])
    with torch.no_grad():
        for _ in range(dim):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pix).logits
            last = logits[:, -1]
            if restrict:
                first = model.config.text_config.vocab_size - model.config.pad_to_multiple_of - 256
                step = last[:, first:first + 256].argmax(-1, keepdim=True) + first
            else:
                step = last.argmax(-1, keepdim=True)
            ids = torch.cat([ids, step], dim=1)
            if int(step) == model.config.text_config.eos_token_id:  # generate stops at </s>
                break
    tokens = ids[0, -dim:].numpy()
    vocab = model.config.text_config.vocab_size - model.config.pad_to_multiple_of
    edges = np.linspace(-1, 1, 256)
    centres = (edges[:-1] + edges[1:]) / 2
    normalized = centres[np.clip(vocab - tokens - 1, 0, 254)]
    lo, hi = np.array(stats["q01"]), np.array(stats["q99"])
    mask = np.array(stats.get("mask", [True] * dim))
    return tokens, np.where(mask, 0.5 * (normalized + 1) * (hi - lo) + lo, normalized)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return layout.write_checkpoint(tmp_path_factory.mktemp("openvla_base"), seed=2)


@pytest.fixture(scope="module")
def trained(base, dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("openvla_lora")
    rc = main(["train", "--backend", "openvla", "--model", str(base), "--image-size", "224x224", "--device", "cpu",
               "--batch-size", "4", "--val-ratio", "0.2", "--learning-rate", "5e-3", "--logging-steps", "1",
               "--eval-samples", "4", "--num-workers", "1", "--seed", "3", "--lora-rank", "4", "--lora-alpha", "8",
               "--max-steps", "6", "--save-steps", "100", "--crop-scale", "1.0", "--no-normalize-gripper",
               "--data-root", str(dataset_dir), "--output-dir", str(out)])
    assert rc == 0
    return out / "checkpoint-final"


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "crane_x7_openvla"
    assert main(["merge-lora", str(trained), "--output", str(out)]) == 0
    return out


def _picture(dataset_dir, t: int) -> tuple[np.ndarray, str]:
    import cv2

    from crane_x7_vla.episode import jpeg
    from crane_x7_vla.episode.reader import list_episodes, load_episode

    ep = load_episode(list_episodes(dataset_dir)[0].path)
    return cv2.resize(jpeg.decode(ep.images["primary"][t]), (224, 224)), ep.instruction


def test_the_export_is_the_published_layout_with_crane_x7_statistics(base, trained, exported, dataset_dir):
    from safetensors.torch import load_file

    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "openvla" and config["architectures"] == ["OpenVLAForActionPrediction"]
    assert config["auto_map"]["AutoModelForVision2Seq"] == "modeling_prismatic.OpenVLAForActionPrediction"
    for field in ("vision_backbone_id", "timm_model_ids", "image_sizes", "use_fused_vision_backbone",
                  "pad_to_multiple_of", "n_action_bins", "arch_specifier", "llm_backbone_id"):
        assert config[field] == json.loads((base / "config.json").read_text())[field], field
    assert config["text_config"]["vocab_size"] == layout.VOCAB + layout.PAD_TO
    entry = config["norm_stats"]["crane_x7"]
    stats = json.loads((dataset_dir / "dataset_statistics.json").read_text())["crane_x7"]
    assert entry["action"]["q01"] == stats["action"]["q01"] and entry["action"]["q99"] == stats["action"]["q99"]
    assert entry["action"]["mask"] == [True] * 7 + [False] and len(entry["action"]["q01"]) == 8
    assert "bridge_orig" in config["norm_stats"]  # the base model's own statistics stay
    assert json.loads((exported / "dataset_statistics.json").read_text()) == {"crane_x7": entry}
    weights = load_file(str(exported / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == layout.published_parameters()
    before = load_file(str(base / "model.safetensors"))
    changed = [k for k in weights if not torch.equal(weights[k], before[k])]
    assert changed and all(".blocks.2." not in k and "attn_pool" not in k for k in changed)  # unused layers untouched
    for name in ("preprocessor_config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "added_tokens.json"):
        assert (exported / name).read_bytes() == (base / name).read_bytes(), name


def test_the_export_predicts_what_the_checkpoint_predicts_and_what_openvla_computes(trained, exported, dataset_dir):
    from crane_x7_vla.backends.openvla.model import load_vla
    from crane_x7_vla.policy.loader import load_policy

    served = load_policy(exported, "cpu")  # no policy_config.json: the folder as it is
    assert served.config["openvla"]["unnorm_key"] == "crane_x7" and served.cameras == ["primary"]
    checkpoint = load_policy(trained, "cpu")
    reference = load_vla(str(exported), image_size=(224, 224))
    reference.model.eval()
    norm_stats = json.loads((exported / "config.json").read_text())["norm_stats"]
    for t in (0, 7, 15):
        image, instruction = _picture(dataset_dir, t)
        obs = {"images": {"primary": image}, "instruction": instruction, "state": robot.home_state()}
        action = served.predict(obs)
        tokens, expected = openvla_predict_action(reference.model, reference.tokenizer, image, instruction,
                                                  norm_stats, "crane_x7")
        np.testing.assert_array_equal(served.last_ids, tokens)
        np.testing.assert_allclose(action[0], robot.clamp_to_limits(expected), atol=1e-9)
        # the checkpoint (base + adapter) decodes among the action tokens: the export's weights
        # write the same ones
        checkpoint.predict(obs)
        restricted, _ = openvla_predict_action(reference.model, reference.tokenizer, image, instruction, norm_stats,
                                               "crane_x7", restrict=True)
        np.testing.assert_array_equal(checkpoint.last_ids, restricted)


def test_a_base_model_is_served_zero_shot_with_its_own_statistics(tmp_path, dataset_dir):
    from crane_x7_vla.checkpoint_contract import CheckpointError
    from crane_x7_vla.policy.loader import load_policy

    folder = layout.write_checkpoint(tmp_path / "base", seed=4, stats={**layout.norm_stats(), **crane_stats()})
    policy = load_policy(folder, "cpu")
    assert policy.config["openvla"]["unnorm_key"] == "crane_x7"
    config = json.loads((folder / "config.json").read_text())
    image, instruction = _picture(dataset_dir, 3)
    for picture in (image, np.zeros((480, 640, 3), np.uint8)):  # any size: OpenVLA resizes the whole picture
        action = policy.predict({"images": {"primary": picture}, "instruction": instruction})
        tokens, expected = openvla_predict_action(policy.vla.model, policy.vla.tokenizer, picture, instruction,
                                                  config["norm_stats"], "crane_x7")
        np.testing.assert_array_equal(policy.last_ids, tokens)
        np.testing.assert_allclose(action[0], robot.clamp_to_limits(expected), atol=1e-9)
    with pytest.raises(CheckpointError, match="norm_stats\\['bridge_orig'\\].action has 7 dimensions"):
        load_policy(folder, "cpu", unnorm_key="bridge_orig")
    with pytest.raises(CheckpointError, match="norm_stats has no 'libero'"):
        load_policy(folder, "cpu", unnorm_key="libero")
    only_bridge = layout.write_checkpoint(tmp_path / "bridge", seed=4)
    with pytest.raises(CheckpointError, match="7 dimensions; this robot takes 8 joint targets"):
        load_policy(only_bridge, "cpu")


def test_merge_lora_refuses_a_format_openvla_cannot_read(base, dataset_dir, tmp_path, capsys):
    out = tmp_path / "state"
    rc = main(["train", "--backend", "openvla", "--model", str(base), "--image-size", "224x224", "--device", "cpu",
               "--batch-size", "2", "--val-ratio", "0", "--num-workers", "1", "--lora-rank", "2", "--max-steps", "1",
               "--state-in-prompt", "--data-root", str(dataset_dir), "--output-dir", str(out)])
    assert rc == 0
    assert main(["merge-lora", str(out / "checkpoint-final"), "--output", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "cannot be written in OpenVLA's published layout: the joint state is in its prompt" in err
