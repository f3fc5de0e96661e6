"""`crane-x7-vla pretrain --backend openpi`: the tiny preset's base model, and training from it."""

import json

import numpy as np
import pytest

from tests.openpi.conftest import make_episodes, tiny_train_config


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from crane_x7_vla.backends.openpi.pretrain import pretrain_tiny

    out = tmp_path_factory.mktemp("pi_base") / "base"
    figures = pretrain_tiny(out, image_size=(32, 32), scenes=12, steps=3, answer_steps=2, held_out=3,
                            batch_size=4, log=lambda *_: None)
    return out, figures


def test_pretraining_writes_a_base_model_with_its_figures(base):
    out, figures = base
    marker = json.loads((out / "pretraining.json").read_text())
    assert marker["backend"] == "openpi" and marker["preset"] == "tiny" and marker["image_size"] == [32, 32]
    assert marker["questions"] > 12  # several objects per scene
    for name in ("held_out_error_pixels", "held_out_answer_error_pixels"):
        assert np.isfinite(figures[name]) and figures[name] >= 0.0
    assert (out / "params").is_dir() and (out / "tokenizer.json").is_file()


def test_training_starts_from_the_base_weights_and_tokenizer(base, tmp_path):
    from crane_x7_vla.backends.openpi import ckpt_io
    from crane_x7_vla.backends.openpi.trainer import train
    from crane_x7_vla.checkpoint_contract import read_policy_config

    out, _ = base
    data = tmp_path / "data"
    make_episodes(data, n_episodes=3, steps=10)
    final = train(tiny_train_config(data, tmp_path / "run", model=str(out), use_lora=False, freeze_vision=True,
                                    max_steps=2, save_steps=100))
    config = read_policy_config(final)
    assert config["openpi"]["conventions"]["normalization"] == "quantile"  # the preset's own conventions
    assert (final / config["openpi"]["tokenizer_file"]).read_bytes() == (out / "tokenizer.json").read_bytes()
    trained = ckpt_io.flat_paths(ckpt_io.restore_numpy(final / "params"))
    pretrained = ckpt_io.flat_paths(ckpt_io.restore_numpy(out / "params"))
    vision = [k for k in pretrained if k.startswith("vision/")]
    assert vision and all(np.array_equal(trained[k], pretrained[k]) for k in vision)  # frozen: kept exactly
    moved = [k for k in pretrained if k.startswith("action_expert/") and not np.array_equal(trained[k], pretrained[k])]
    assert moved  # and the rest trained from there


def test_a_base_model_of_another_picture_size_is_refused(base, tmp_path):
    from crane_x7_vla.backends.openpi.trainer import train
    from crane_x7_vla.training.config import ConfigError

    out, _ = base
    data = tmp_path / "data"
    make_episodes(data, n_episodes=2, steps=6)
    with pytest.raises(ConfigError, match="--image-size 48x48: the base model .* pretrained at 32x32"):
        train(tiny_train_config(data, tmp_path / "run", model=str(out), image_size="48x48", use_lora=False))


def test_a_base_model_without_its_weights_is_named(base, tmp_path):
    import shutil

    from crane_x7_vla.backends.openpi.trainer import train
    from crane_x7_vla.training.config import ConfigError

    broken = tmp_path / "broken"
    shutil.copytree(base[0], broken)
    shutil.rmtree(broken / "params")
    data = tmp_path / "data"
    make_episodes(data, n_episodes=2, steps=6)
    with pytest.raises(ConfigError, match="params is missing"):
        train(tiny_train_config(data, tmp_path / "run", model=str(broken), use_lora=False))
