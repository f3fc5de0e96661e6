"""OpenVLA's published layout loaded by our own model class: a tiny checkpoint written by the
tests (openvla_layout.py) with the published names, fields and processor files."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crane_x7_vla.backends.openvla import decode
from crane_x7_vla.backends.openvla.model import ModelError, build_batch, load_vla, pixel_values

from . import openvla_layout as layout


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return layout.write_checkpoint(tmp_path_factory.mktemp("openvla_published"), seed=1)


@pytest.fixture(scope="module")
def vla(published):
    loaded = load_vla(str(published), image_size=(224, 224))
    loaded.model.eval()
    return loaded


def test_every_published_parameter_is_loaded_as_written(published, vla):
    from safetensors.torch import load_file

    from crane_x7_vla.backends.openvla.prismatic import OpenVLAForActionPrediction

    assert isinstance(vla.model, OpenVLAForActionPrediction) and vla.family == "openvla"
    written = load_file(str(published / "model.safetensors"))
    state = vla.model.state_dict()
    assert set(state) == set(layout.published_parameters())
    for name, tensor in written.items():
        assert torch.equal(state[name], tensor), name
    assert vla.vocab_size == layout.VOCAB and vla.model.config.action_vocab_size == layout.VOCAB
    # the normalisation OpenVLA's processor applies (tvf_normalize_params), one per tower: 6 channels
    assert vla.pixel_stats == layout.TVF_STATS
    pix = pixel_values(vla, {"primary": np.full((1, 224, 224, 3), 128, np.uint8)}, ["primary"], "cpu")
    assert pix.shape == (1, 6, 224, 224)
    np.testing.assert_allclose(
        pix[0, :3, 0, 0], (128 / 255 - np.array(layout.TVF_STATS[0][0])) / layout.TVF_STATS[0][1], rtol=1e-5
    )  # float32
    assert vla.model.config.norm_stats == json.loads((published / "config.json").read_text())["norm_stats"]


def _timm_patches(w: dict, prefix: str, x: torch.Tensor, dim: int, depth: int, heads: int, dino: bool):
    """timm's VisionTransformer.get_intermediate_layers(n={depth - 2}) written out from the raw
    weights: patch embedding, prefix tokens and positions, blocks up to depth - 2, prefix dropped."""
    x = F.conv2d(x, w[f"{prefix}.patch_embed.proj.weight"], w[f"{prefix}.patch_embed.proj.bias"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    if dino:  # no_embed_class: positions on the patches, then class and register tokens in front
        x = x + w[f"{prefix}.pos_embed"]
        b = x.shape[0]
        x = torch.cat([w[f"{prefix}.cls_token"].expand(b, -1, -1), w[f"{prefix}.reg_token"].expand(b, -1, -1), x], 1)
    else:
        x = x + w[f"{prefix}.pos_embed"]
    for i in range(depth - 1):
        p = f"{prefix}.blocks.{i}"
        h = F.layer_norm(x, (dim,), w[f"{p}.norm1.weight"], w[f"{p}.norm1.bias"], eps=1e-6)
        qkv = F.linear(h, w[f"{p}.attn.qkv.weight"], w[f"{p}.attn.qkv.bias"])
        q, k, v = qkv.reshape(x.shape[0], x.shape[1], 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (dim // heads) ** 0.5, -1) @ v
        h = F.linear(att.transpose(1, 2).reshape(x.shape), w[f"{p}.attn.proj.weight"], w[f"{p}.attn.proj.bias"])
        x = x + (h * w[f"{p}.ls1.scale_factor"] if dino else h)
        h = F.layer_norm(x, (dim,), w[f"{p}.norm2.weight"], w[f"{p}.norm2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, w[f"{p}.mlp.fc1.weight"], w[f"{p}.mlp.fc1.bias"])),
            w[f"{p}.mlp.fc2.weight"],
            w[f"{p}.mlp.fc2.bias"],
        )
        x = x + (h * w[f"{p}.ls2.scale_factor"] if dino else h)
    return x[:, 5:] if dino else x


def test_forward_is_the_published_forward(published, vla):
    """Towers (timm's forward), channel-wise fusion, the 3-layer GELU projector and the patches
    inserted after <s>: the logits equal the Llama run on embeddings assembled by hand."""
    from safetensors.torch import load_file

    w = load_file(str(published / "model.safetensors"))
    torch.manual_seed(0)
    pix = torch.randn(2, 6, 224, 224)
    t0, t1 = layout.TOWERS
    patches = torch.cat(
        [
            _timm_patches(
                w, "vision_backbone.featurizer", pix[:, :3], t0["embed_dim"], t0["depth"], t0["num_heads"], True
            ),
            _timm_patches(
                w, "vision_backbone.fused_featurizer", pix[:, 3:], t1["embed_dim"], t1["depth"], t1["num_heads"], False
            ),
        ],
        dim=2,
    )
    assert patches.shape == (2, 256, t0["embed_dim"] + t1["embed_dim"])
    with torch.no_grad():
        torch.testing.assert_close(vla.model.vision_backbone(pix), patches, rtol=1e-4, atol=1e-5)
        h = F.gelu(F.linear(patches, w["projector.fc1.weight"], w["projector.fc1.bias"]))
        h = F.gelu(F.linear(h, w["projector.fc2.weight"], w["projector.fc2.bias"]))
        projected = F.linear(h, w["projector.fc3.weight"], w["projector.fc3.bias"])
        batch = build_batch(vla, ["Reach the green cube", "reach the green cube"], None, "cpu")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        embeds = vla.model.language_model.get_input_embeddings()(ids)
        joined = torch.cat([embeds[:, :1], projected, embeds[:, 1:]], dim=1)
        expected = vla.model.language_model(inputs_embeds=joined).logits
        got = vla.model(input_ids=ids, attention_mask=mask, pixel_values=pix).logits
    assert got.shape == (2, ids.shape[1] + 256, layout.VOCAB + layout.PAD_TO)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_batched_greedy_decoding_equals_one_by_one_and_no_cache(vla):
    rng = np.random.default_rng(3)
    pix = pixel_values(vla, {"primary": rng.integers(0, 255, (4, 224, 224, 3), dtype=np.uint8)}, ["primary"], "cpu")
    batch = build_batch(vla, ["reach the green cube"] * 4, None, "cpu")
    batch.pop("labels")
    first = vla.vocab_size - 256
    together = decode.generate_action_ids(vla.model, vla, batch, pix, 8, first)
    assert together.shape == (4, 8) and bool(((together >= first) & (together < vla.vocab_size)).all())
    assert len({tuple(r) for r in together.tolist()}) > 1  # the pictures differ, so do the actions
    for i in range(4):
        alone = decode.generate_action_ids(
            vla.model, vla, {k: v[i : i + 1] for k, v in batch.items()}, pix[i : i + 1], 8, first
        )
        assert torch.equal(alone[0], together[i])
    # without the cache: the whole sequence again for every token
    ids = batch["input_ids"]
    with torch.no_grad():
        for k in range(8):
            logits = vla.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pix).logits
            step = logits[:, -1, first : vla.vocab_size].argmax(-1) + first
            assert torch.equal(step, together[:, k])
            ids = torch.cat([ids, step[:, None]], dim=1)


def test_the_prompt_ends_as_openvla_expects(vla):
    ids = build_batch(vla, ["Reach The Green Cube"], None, "cpu")["input_ids"][0].tolist()
    tokens = vla.tokenizer.convert_ids_to_tokens(ids)
    assert ids[0] == vla.tokenizer.bos_token_id and tokens[-1] == "\u2581"
    assert vla.tokenizer.decode(ids[1:-1]) == "In: What action should the robot take to reach the green cube?\nOut:"


def test_a_published_folder_that_does_not_fit_is_refused_in_one_line(published, tmp_path):
    import shutil

    with pytest.raises(ModelError, match="takes 224x224 images; pass --image-size 224x224"):
        load_vla(str(published), image_size=(64, 64))
    broken = tmp_path / "broken"
    shutil.copytree(published, broken)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(broken / "model.safetensors"))
    weights["vision_backbone.featurizer.blocks.0.ls1.gamma"] = weights.pop(
        "vision_backbone.featurizer.blocks.0.ls1.scale_factor"
    )
    save_file(weights, str(broken / "model.safetensors"))
    with pytest.raises(ModelError, match="OpenVLA's parameter names .*ls1.scale_factor"):
        load_vla(str(broken), image_size=(224, 224))
    shutil.copyfile(published / "model.safetensors", broken / "model.safetensors")
    (broken / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError, match="preprocessor_config.json is missing"):
        load_vla(str(broken), image_size=(224, 224))
    config = json.loads((published / "config.json").read_text())
    config["vision_backbone_id"] = "dinoclip-vit-l-336px"
    shutil.copyfile(published / "preprocessor_config.json", broken / "preprocessor_config.json")
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="vision_backbone_id 'dinoclip-vit-l-336px' is not supported"):
        load_vla(str(broken), image_size=(224, 224))
