"""`train --backend openpi --model <openpi checkpoint>`: the network, its LoRA and its weights come
from a checkpoint in openpi's on-disk layout (written by openpi_layout.py), the run's
checkpoint-final serves as a policy."""

from dataclasses import replace

import numpy as np
import pytest

from crane_x7_vla import robot
from crane_x7_vla.backends.openpi.presets import GemmaConfig, VisionConfig
from crane_x7_vla.training.config import ConfigError

from .conftest import tiny_train_config
from .openpi_layout import norm_stats, openpi_tree, unwrap, write_checkpoint, write_spm_model
from .test_conventions import GEMMA_LIKE_PIECES


@pytest.fixture(scope="module")
def openpi_lora_ckpt(tiny_cfg, tmp_path_factory):
    cfg = replace(
        tiny_cfg,
        vision=VisionConfig(width=48, depth=2, mlp_dim=96, num_heads=3, patch_size=8),
        prefix=GemmaConfig(width=56, depth=2, mlp_dim=112, num_heads=2, num_kv_heads=1, head_dim=16),
        expert=GemmaConfig(width=40, depth=2, mlp_dim=80, num_heads=2, num_kv_heads=1, head_dim=16),
        vocab_size=320,
        action_dim=32,
    )
    root = tmp_path_factory.mktemp("openpi")
    tree = openpi_tree(cfg, np.random.default_rng(0), lora={"": (4, 4), "_1": (6, 6)})
    step_dir = write_checkpoint(root / "run", 2000, tree, norm_stats(), asset_id="crane_x7")
    tokenizer = write_spm_model(root / "paligemma_tokenizer.model", GEMMA_LIKE_PIECES)
    return step_dir, tokenizer, unwrap(tree)


def _settings(episodes_dir, out, step_dir, tokenizer_file, **overrides):
    from crane_x7_vla.training.config import TrainConfig

    default = TrainConfig()  # LoRA settings left at their defaults: the checkpoint's adapters decide
    settings = dict(
        model=str(step_dir),
        tokenizer=str(tokenizer_file),
        norm_stats_asset="crane_x7",
        max_steps=2,
        save_steps=100,
        eval_samples=4,
        merge_lora=True,
        lora_rank=default.lora_rank,
        lora_alpha=default.lora_alpha,
        lora_dropout=default.lora_dropout,
    )
    settings.update(overrides)
    return tiny_train_config(episodes_dir, out, **settings)


@pytest.fixture(scope="module")
def openpi_run(openpi_lora_ckpt, episodes_dir, tmp_path_factory):
    from crane_x7_vla.backends.openpi.trainer import train

    step_dir, tokenizer, _ = openpi_lora_ckpt
    out = tmp_path_factory.mktemp("run_from_openpi")
    return train(_settings(episodes_dir, out, step_dir, tokenizer))


def test_train_from_openpi_lora_checkpoint_and_serve(openpi_run, openpi_lora_ckpt):
    import json

    from crane_x7_vla.backends.openpi import ckpt_io
    from crane_x7_vla.policy.loader import load_policy

    step_dir, _, tree = openpi_lora_ckpt
    final = openpi_run
    config = json.loads((final / "policy_config.json").read_text())
    mc = config["openpi"]["model_config"]
    # sizes and adapters from the checkpoint's weights; the command line's LoRA defaults do not apply
    assert (mc["prefix"]["width"], mc["expert"]["width"], mc["vision"]["width"], mc["vocab_size"]) == (56, 40, 48, 320)
    assert (mc["lora_rank"], mc["expert_lora_rank"], mc["lora_groups"]) == (4, 6, ["attn", "ffn"])
    assert (mc["lora_alpha"], mc["expert_lora_alpha"], mc["lora_dropout"]) == (4.0, 6.0, 0.0)
    # openpi's conventions, recorded for deployment: three image slots, resize-with-pad, prompt
    # format, z-score statistics taken from the checkpoint's assets/crane_x7/norm_stats.json
    assert config["openpi"]["conventions"] == {
        "normalization": "zscore",
        "prompt": "openpi",
        "image_resize": "pad",
        "image_slots": ["primary", None, None],
        "loss": "all_dims",
    }
    assert mc["num_cameras"] == 3 and config["cameras"] == ["primary"]
    assert config["image_spec"]["resize"] == "pad" and abs(config["image_spec"]["crop_scale"] - 0.9025) < 1e-9
    assert config["openpi"]["tokenizer_file"] == "tokenizer.model" and (final / "tokenizer.model").is_file()
    stats = norm_stats()
    assert config["action_space"]["normalization"] == "zscore"
    np.testing.assert_allclose(config["action_space"]["model_statistics"]["std"], stats["actions"]["std"])
    np.testing.assert_allclose(config["action_space"]["state_statistics"]["mean"], stats["state"]["mean"])
    # the frozen weights are the checkpoint's, the adapters went on training
    params = ckpt_io.flat_paths(ckpt_io.restore_numpy(final / ckpt_io.PARAMS_DIR))
    llm = tree["PaliGemma"]["llm"]["layers"]
    np.testing.assert_array_equal(params["action_expert/layers/q"], llm["attn"]["q_einsum_1"]["w"])
    np.testing.assert_array_equal(params["prefix_lm/layers/down"], llm["mlp"]["linear"])
    assert not np.array_equal(
        params["action_expert/layers/attn_out_lora_b"], llm["attn"]["attn_vec_einsum_1"]["lora_b"]
    )

    policy = load_policy(final, device="cpu")
    state = np.r_[robot.HOME_POSE, robot.GRIPPER_OPEN]
    obs = {
        "images": {"primary": np.full((30, 40, 3), 90, np.uint8)},
        "state": state,
        "instruction": "Pick up the red cube",
    }
    actions = policy.predict(obs)
    # the policy prepares inputs as openpi does
    prepared = policy.batcher.observation({"primary": policy_image(policy, obs)}, state[None], [obs["instruction"]])
    assert prepared["image_mask"].tolist() == [[True, False, False]]
    assert (
        prepared["tokens"][0, 0] == 2 and prepared["tokens"][0, prepared["token_mask"][0].sum() - 1] == 5
    )  # <bos> ... "\n"
    assert actions.shape == (4, 8) and np.all(np.isfinite(actions))
    merged = load_policy(final / "merged", device="cpu")
    np.testing.assert_allclose(merged.predict(obs), load_policy(final, device="cpu").predict(obs), atol=1e-4)


def policy_image(policy, obs):
    from crane_x7_vla.preprocess import prepare_image

    img = prepare_image(obs["images"]["primary"], policy.spec, train=False)[None]
    assert not img[0, :4].any() and not img[0, -4:].any()  # 40x30 -> 32x24 with 4 black rows above and below
    return img


def test_conventions_follow_the_model_unless_told(episodes_dir, tmp_path):
    from crane_x7_vla.backends.openpi.trainer import _conventions
    from crane_x7_vla.training.preflight import preflight

    for given, expected in (({}, "crane_x7"), ({"conventions": "openpi"}, "openpi")):
        cfg = tiny_train_config(episodes_dir, tmp_path / "o", **given).resolved()  # the tiny preset
        pre = preflight(cfg)
        assert _conventions(cfg, pre, pre.data.cameras).name == expected
    cfg = tiny_train_config(episodes_dir, tmp_path / "o", image_slots=["primary", None, None]).resolved()
    with pytest.raises(ConfigError, match="needs --conventions openpi"):
        _conventions(cfg, preflight(cfg), ["primary"])


def test_openpi_checkpoint_settings_refused_before_building(openpi_lora_ckpt, episodes_dir, tmp_path):
    from crane_x7_vla.backends.openpi.trainer import train

    step_dir, tokenizer, _ = openpi_lora_ckpt
    with pytest.raises(
        ConfigError, match=r"--lora-rank 8: the checkpoint's LoRA adapters of the prefix decoder .* rank 4"
    ):
        train(_settings(episodes_dir, tmp_path / "a", step_dir, tokenizer, lora_rank=8))
    with pytest.raises(ConfigError, match="carries LoRA adapters"):
        train(_settings(episodes_dir, tmp_path / "b", step_dir, tokenizer, use_lora=False, merge_lora=False))
    with pytest.raises(ConfigError, match="PaliGemma's tokenizer"):
        train(_settings(episodes_dir, tmp_path / "c", step_dir, tokenizer, tokenizer=None, norm_stats_asset=None))
    with pytest.raises(ConfigError, match=r"pos_embedding.*--image-size 32x32"):
        train(_settings(episodes_dir, tmp_path / "d", step_dir, tokenizer, image_size="64x64"))
    with pytest.raises(ConfigError, match=r"step\(s\) 2000"):
        train(_settings(episodes_dir, tmp_path / "e", step_dir.parent, tokenizer))
    with pytest.raises(ConfigError, match=r"--norm-stats-asset 'droid'.*assets with norm stats: crane_x7"):
        train(_settings(episodes_dir, tmp_path / "f", step_dir, tokenizer, norm_stats_asset="droid"))


def test_export_in_openpis_layout_imports_back(openpi_run, tmp_path):
    import json

    from crane_x7_vla.backends.openpi import ckpt_io, openpi_import as oi
    from crane_x7_vla.backends.openpi.export import main
    from crane_x7_vla.backends.openpi.presets import ModelConfig

    final = openpi_run
    out = tmp_path / "exported"
    assert main([str(final), str(out), "--asset-id", "crane_x7"]) == 0
    assert (out / "params").is_dir() and (out / "assets" / "crane_x7" / "norm_stats.json").is_file()
    ours = ckpt_io.flat_paths(ckpt_io.restore_numpy(final / ckpt_io.PARAMS_DIR))
    ck = oi.OpenpiCheckpoint(out)
    # openpi's restore_params reads metadata["params"]: the item holds {"params": tree}
    assert set(ckpt_io.restore_numpy(out / "params")) == {"params"}
    config = json.loads((final / "policy_config.json").read_text())
    mcfg = ModelConfig.from_dict(config["openpi"]["model_config"])
    assert oi.infer_config(ck.shapes(), mcfg) == mcfg  # sizes and LoRA read back from the exported weights
    back = oi.import_params(ck.params())
    assert set(back) == set(ours)
    for path, value in ours.items():
        np.testing.assert_array_equal(back[path], value, err_msg=path)
    stats = ck.norm_stats("crane_x7")
    np.testing.assert_allclose(stats["actions"]["mean"], config["action_space"]["model_statistics"]["mean"])
    np.testing.assert_allclose(stats["state"]["std"], config["action_space"]["state_statistics"]["std"])
    assert main([str(final), str(out)]) == 1  # never writes into a non-empty directory
    # the export served as it is (`crane-x7-vla serve OUT`) acts as the checkpoint it came from
    from crane_x7_vla.policy.loader import load_policy

    assert (out / "tokenizer.model").read_bytes() == (final / "tokenizer.model").read_bytes()
    served, original = load_policy(out, device="cpu"), load_policy(final, device="cpu")
    assert served.config["openpi"]["model_config"] == config["openpi"]["model_config"]
    assert served.config["openpi"]["conventions"] == config["openpi"]["conventions"]
    obs = {
        "images": {"primary": np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)},
        "state": np.r_[robot.HOME_POSE + 0.05, robot.GRIPPER_OPEN],
        "instruction": "Pick up the red cube",
    }
    np.testing.assert_allclose(served.predict(obs), original.predict(obs), atol=1e-5)


def test_train_from_openpi_base_checkpoint_places_lora_as_openpi(tiny_cfg, episodes_dir, tmp_path):
    """A base checkpoint (no adapters): LoRA where openpi's LoRA fine-tuning puts it, z-score
    statistics of this run's data, PaliGemma's tokenizer as a tokenizer.json."""
    import json

    from crane_x7_vla.backends.openpi.trainer import train
    from crane_x7_vla.policy.loader import load_policy

    from .openpi_layout import paligemma_like_tokenizer

    cfg = replace(
        tiny_cfg,
        vision=VisionConfig(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=16),
        prefix=GemmaConfig(width=48, depth=1, mlp_dim=96, num_heads=2, num_kv_heads=1, head_dim=16),
        expert=GemmaConfig(width=32, depth=1, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16),
        vocab_size=200,
        action_dim=32,
    )
    step_dir = write_checkpoint(tmp_path / "run", 30000, openpi_tree(cfg, np.random.default_rng(5)), norm_stats())
    words = ("pick", "up", "the", "red", "cube", "push", "blue", "block")
    tok = paligemma_like_tokenizer(tmp_path / "tokenizer.json", words)
    final = train(
        _settings(
            episodes_dir,
            tmp_path / "out",
            step_dir,
            tok,
            tokenizer=str(tok),
            norm_stats_asset=None,
            max_steps=1,
            merge_lora=False,
        )
    )
    config = json.loads((final / "policy_config.json").read_text())
    mc = config["openpi"]["model_config"]
    assert (mc["lora_rank"], mc["lora_alpha"], mc["expert_lora_rank"], mc["expert_lora_alpha"]) == (16, 16.0, 32, 32.0)
    assert mc["lora_groups"] == ["attn", "ffn"] and mc["lora_dropout"] == 0.0
    assert config["action_space"]["normalization"] == "zscore" and "state_statistics" not in config["action_space"]
    assert config["openpi"]["tokenizer_file"] == "tokenizer.json"
    policy = load_policy(final, device="cpu")
    state = np.r_[robot.HOME_POSE, robot.GRIPPER_OPEN]
    actions = policy.predict(
        {
            "images": {"primary": np.full((32, 32, 3), 90, np.uint8)},
            "state": state,
            "instruction": "push the blue block",
        }
    )
    assert actions.shape == (4, 8) and np.all(np.isfinite(actions))


def test_resume_keeps_the_checkpoints_conventions_and_tokenizer(openpi_run, openpi_lora_ckpt, episodes_dir, tmp_path):
    import json

    from crane_x7_vla.backends.openpi.trainer import train

    step_dir, tokenizer, _ = openpi_lora_ckpt
    first = json.loads((openpi_run / "policy_config.json").read_text())
    final = train(
        _settings(
            episodes_dir, tmp_path / "resumed", step_dir, tokenizer, max_steps=3, resume_from_checkpoint=str(openpi_run)
        )
    )
    again = json.loads((final / "policy_config.json").read_text())
    assert again["step"] == 3
    for key in ("conventions", "model_config", "tokenizer_file"):
        assert again["openpi"][key] == first["openpi"][key], key
    assert again["image_spec"] == first["image_spec"] and again["action_space"] == first["action_space"]
    assert (final / "tokenizer.model").read_bytes() == (openpi_run / "tokenizer.model").read_bytes()
