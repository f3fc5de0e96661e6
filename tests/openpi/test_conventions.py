"""openpi's π0 conventions: z-score normalisation, prompt format, resize-with-pad, image slots
with masks, PaliGemma's tokenizer as a SentencePiece model file or tokenizer.json."""

import jax
import numpy as np
import pytest
from flax import nnx

from crane_x7_vla.backends.openpi import conventions as cv
from crane_x7_vla.backends.openpi.spm import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED
from crane_x7_vla.backends.openpi.tokenizer import PromptTokenizer
from crane_x7_vla.backends.openpi.transforms import ActionSpace
from crane_x7_vla.preprocess import ImageSpec, prepare_image, resize_with_pad

from .openpi_layout import paligemma_like_tokenizer, write_spm_model


def _stats(rng, n=8):
    mean, std = rng.normal(size=n) * 0.1, rng.uniform(0.05, 0.3, n)
    return {"mean": mean.tolist(), "std": std.tolist(), "q01": (mean - std).tolist(), "q99": (mean + std).tolist()}


def test_zscore_action_space_is_unclipped_and_recorded():
    rng = np.random.default_rng(0)
    act, state = _stats(rng), _stats(rng)
    space = ActionSpace(4, 32, act, state, normalization="zscore", state_from_dataset=False)
    s = rng.normal(size=8)
    targets = s + rng.normal(size=(4, 8)) * 3.0  # far outside q01..q99
    enc = space.encode_actions(targets, s)
    delta = targets - np.where(np.arange(8) < 7, s, 0.0)
    np.testing.assert_allclose(enc[:, :8], (delta - act["mean"]) / (np.asarray(act["std"]) + 1e-6), rtol=1e-5)
    assert np.abs(enc).max() > 3 and not enc[:, 8:].any()  # unclipped, padded with zeros
    np.testing.assert_allclose(space.decode_actions(enc, s), targets, atol=1e-5)
    np.testing.assert_allclose(
        space.encode_state(s)[:8], (s - state["mean"]) / (np.asarray(state["std"]) + 1e-6), rtol=1e-5
    )
    config = {"action_space": space.to_dict(), "dataset_statistics": {}}
    assert config["action_space"]["normalization"] == "zscore" and config["action_space"]["state_statistics"] == state
    again = ActionSpace.from_config(config)
    np.testing.assert_allclose(again.encode_state(s), space.encode_state(s))
    with pytest.raises(ValueError, match="normalization must be one of"):
        ActionSpace.from_config(
            {"action_space": dict(space.to_dict(), normalization="minmax"), "dataset_statistics": {}}
        )


def test_resize_with_pad_keeps_aspect_and_pads_black():
    rng = np.random.default_rng(1)
    wide = rng.integers(1, 255, (20, 40, 3), dtype=np.uint8)  # 2:1
    out = resize_with_pad(wide, 32, 32)
    assert out.shape == (32, 32, 3)
    assert not out[:8].any() and not out[24:].any() and out[8:24].all()  # 32x16 picture, 8 black rows each side
    from PIL import Image

    np.testing.assert_array_equal(out[8:24], np.asarray(Image.fromarray(wide).resize((32, 16), Image.BILINEAR)))
    tall = rng.integers(1, 255, (45, 15, 3), dtype=np.uint8)
    out = resize_with_pad(tall, 32, 32)  # 10x32 in the middle: int((32 - 10) / 2) = 11 columns left
    assert not out[:, :11].any() and out[:, 11:21].all() and not out[:, 21:].any()
    spec = ImageSpec(32, 32, crop_scale=0.9025, color_jitter=0.0, resize="pad")
    np.testing.assert_array_equal(prepare_image(wide, spec, train=False), resize_with_pad(wide, 32, 32))
    trained = prepare_image(wide, spec, train=True, rng=np.random.default_rng(0))
    assert trained.shape == (32, 32, 3)
    assert ImageSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="image_spec.resize"):
        ImageSpec(resize="stretch")


GEMMA_LIKE_PIECES = (
    [
        ("<pad>", 0.0, CONTROL),
        ("<eos>", 0.0, CONTROL),
        ("<bos>", 0.0, CONTROL),
        ("<unk>", 0.0, UNKNOWN),
        ("<start_of_turn>", 0.0, USER_DEFINED),
        ("\n", 0.0, NORMAL),
    ]
    + [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]
    + [(c, -100.0 - i, NORMAL) for i, c in enumerate("abcdefghijklmnopqrstuvwxyzPR▁")]
    + [
        (m, -1.0 - i, NORMAL)
        for i, m in enumerate(
            ["▁t", "he", "▁the", "▁c", "ub", "▁cub", "▁cube", "▁r", "ed", "▁red", "ck", "ick", "Pick", "▁u", "▁up"]
        )
    ]
)


def test_prompt_format_openpi_with_a_sentencepiece_model_and_a_tokenizer_json(tmp_path):
    spm_path = write_spm_model(tmp_path / "paligemma_tokenizer.model", GEMMA_LIKE_PIECES)
    tok = PromptTokenizer.from_file(spm_path, 12, prompt_format="openpi")
    assert tok.file_name == "tokenizer.model" and (tok.bos_id, tok.pad_id) == (2, 0)
    ids, mask, cut = tok.encode("  Pick_up the red cube\n")
    vocab = {p: i for i, (p, _, _) in enumerate(GEMMA_LIKE_PIECES)}
    # stripped, '_' and the newline -> ' ' (then stripped), case kept; BOS first, "\n" last
    expected = [2] + [vocab[p] for p in ("Pick", "▁up", "▁the", "▁red", "▁cube")] + [vocab["\n"]]
    assert ids[: len(expected)].tolist() == expected and mask.sum() == len(expected) and not cut
    assert not ids[len(expected) :].any()  # padded with <pad> = 0
    # non-ASCII text falls back to its UTF-8 bytes
    ids, mask, _ = tok.encode("ü")
    assert ids[1:3].tolist() == [vocab["<0xC3>"], vocab["<0xBC>"]]
    # the crane_x7 format lower-cases and has no trailing newline
    low = PromptTokenizer.from_file(spm_path, 12)
    ids, mask, _ = low.encode("Pick up")
    assert ids[: mask.sum()].tolist() == [2, vocab["p"], vocab["ick"], vocab["▁up"]]

    json_path = paligemma_like_tokenizer(tmp_path / "tokenizer.json", ["Pick", "up", "the", "red", "cube"])
    tj = PromptTokenizer.from_file(json_path, 12, prompt_format="openpi")
    assert tj.file_name == "tokenizer.json"
    ids, mask, _ = tj.encode("Pick_up the red cube")
    pieces = [tj.tok.id_to_token(int(i)) for i in ids[: mask.sum()]]
    assert pieces == ["<bos>", "Pick", "▁up", "▁the", "▁red", "▁cube", "\n"]
    (tmp_path / "broken.model").write_bytes(b"\x0a\x05ab")  # a piece message cut short
    with pytest.raises(ValueError, match="broken.model: not a SentencePiece model file"):
        PromptTokenizer.from_file(tmp_path / "broken.model", 12)


def test_image_slots_and_masks(tiny_cfg, tmp_path):
    from dataclasses import replace

    from crane_x7_vla.backends.openpi.batching import Batcher
    from crane_x7_vla.backends.openpi.model import Pi0Model

    conv = cv.openpi(["primary"])
    assert conv.image_slots == ("primary", None, None) and conv.num_images(["primary"]) == 3
    assert cv.openpi(["top", "wrist"], ["top", None, "wrist"]).image_slots == ("top", None, "wrist")
    with pytest.raises(ValueError, match="not among the run's cameras"):
        cv.openpi(["primary"], ["primary", "wrist", None])
    with pytest.raises(ValueError, match="give 3 entries"):
        cv.openpi(["primary"], ["primary"])
    assert cv.Conventions.from_dict(conv.to_dict()) == conv
    assert cv.Conventions.from_dict(None) == cv.CRANE_X7

    rng = np.random.default_rng(2)
    stats = _stats(rng)
    space = ActionSpace(tiny_cfg.action_horizon, 32, stats, stats, normalization="zscore")

    tok = PromptTokenizer.from_file(
        paligemma_like_tokenizer(tmp_path / "t.json", ["a", "b"]), tiny_cfg.max_token_len, prompt_format="openpi"
    )
    batcher = Batcher(space, tok, ["primary"], slots=conv.image_slots)
    img = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    obs = batcher.observation({"primary": img}, rng.normal(size=(2, 8)), ["a", "b"])
    assert obs["images"].shape == (2, 3, 32, 32, 3) and not obs["images"][:, 1:].any()
    assert obs["image_mask"].tolist() == [[True, False, False]] * 2
    # a masked slot's picture does not change the sampled actions; an unmasked one does
    cfg = replace(tiny_cfg, num_cameras=3)
    model = Pi0Model(cfg, nnx.Rngs(0))
    obs = {k: jax.numpy.asarray(v) for k, v in obs.items()}
    noise = jax.random.normal(jax.random.key(1), (2, cfg.action_horizon, cfg.action_dim))
    a = model.sample_actions(None, obs, num_steps=2, noise=noise)
    other = dict(obs, images=obs["images"].at[:, 2].set(200))
    np.testing.assert_allclose(
        np.asarray(model.sample_actions(None, other, num_steps=2, noise=noise)), np.asarray(a), atol=1e-5
    )
    unmasked = dict(other, image_mask=jax.numpy.ones((2, 3), bool))
    assert (
        np.abs(np.asarray(model.sample_actions(None, unmasked, num_steps=2, noise=noise)) - np.asarray(a)).max() > 1e-4
    )
