"""A tiny OpenVLA checkpoint in the published `openvla/openvla-7b` layout, written by the tests
themselves: config.json with the published fields, model.safetensors with the published
parameter names (listed here from the definitions of timm's VisionTransformer, OpenVLA's
projector and transformers' Llama, not from our model class), preprocessor_config.json and
processor_config.json as OpenVLA's processor saves them, and a Llama-style tokenizer
(byte-fallback BPE, Metaspace, `<PAD>` added after the vocabulary); the processor and
tokenizer files are written by the package's layout module, which the `tiny` preset uses too.

Only the widths are tiny: the towers keep their patch size and 224-pixel input (256 patches),
and `vision_tower_overrides` in config.json records their smaller sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from crane_x7_vla.backends.openvla import layout

DINO, SIGLIP = "vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"
TOWERS = [dict(embed_dim=32, depth=3, num_heads=2), dict(embed_dim=48, depth=3, num_heads=3)]
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
VOCAB = 512  # the tokenizer's vocabulary (Llama-2: 32000); the embedding has VOCAB + 64 rows
PAD_TO = 64
PATCH, SIZE = 14, 224
TVF_STATS, MEANS_STDS = layout.TVF_STATS, layout.MEANS_STDS  # the published preprocessor's normalisation

_CORPUS = """In: What action should the robot take to reach the green cube?
Out: pick up the red cube and put it on the plate. place the blue block in the box.
what action should the robot take to push the yellow button, open the drawer, close the gripper
the robot arm moves left, right, up and down. go home. lift the object off the table.
"""


def tower_parameters(prefix: str, timm_id: str, dim: int, depth: int, heads: int) -> dict[str, tuple]:
    """timm VisionTransformer parameters of one tower as the published checkpoint names them."""
    dino = timm_id == DINO
    hidden = int(dim * (4.0 if dino else 3.7362))
    grid = (SIZE // PATCH) ** 2
    p = {f"{prefix}.patch_embed.proj.weight": (dim, 3, PATCH, PATCH), f"{prefix}.patch_embed.proj.bias": (dim,),
         f"{prefix}.pos_embed": (1, grid, dim), f"{prefix}.norm.weight": (dim,), f"{prefix}.norm.bias": (dim,)}
    if dino:
        p.update({f"{prefix}.cls_token": (1, 1, dim), f"{prefix}.reg_token": (1, 4, dim)})
    for i in range(depth):
        b = f"{prefix}.blocks.{i}"
        p.update({f"{b}.norm1.weight": (dim,), f"{b}.norm1.bias": (dim,), f"{b}.attn.qkv.weight": (3 * dim, dim),
                  f"{b}.attn.qkv.bias": (3 * dim,), f"{b}.attn.proj.weight": (dim, dim), f"{b}.attn.proj.bias": (dim,),
                  f"{b}.norm2.weight": (dim,), f"{b}.norm2.bias": (dim,), f"{b}.mlp.fc1.weight": (hidden, dim),
                  f"{b}.mlp.fc1.bias": (hidden,), f"{b}.mlp.fc2.weight": (dim, hidden), f"{b}.mlp.fc2.bias": (dim,)})
        if dino:
            p.update({f"{b}.ls1.scale_factor": (dim,), f"{b}.ls2.scale_factor": (dim,)})
    if not dino:
        a = f"{prefix}.attn_pool"
        p.update({f"{a}.latent": (1, 1, dim), f"{a}.q.weight": (dim, dim), f"{a}.q.bias": (dim,),
                  f"{a}.kv.weight": (2 * dim, dim), f"{a}.kv.bias": (2 * dim,), f"{a}.proj.weight": (dim, dim),
                  f"{a}.proj.bias": (dim,), f"{a}.norm.weight": (dim,), f"{a}.norm.bias": (dim,),
                  f"{a}.mlp.fc1.weight": (hidden, dim), f"{a}.mlp.fc1.bias": (hidden,),
                  f"{a}.mlp.fc2.weight": (dim, hidden), f"{a}.mlp.fc2.bias": (dim,)})
    return p


def published_parameters(towers=TOWERS, text=TEXT, vocab: int = VOCAB) -> dict[str, tuple]:
    """Every parameter name and shape of a dinosiglip OpenVLA checkpoint of these sizes."""
    p = tower_parameters("vision_backbone.featurizer", DINO, towers[0]["embed_dim"], towers[0]["depth"],
                         towers[0]["num_heads"])
    p.update(tower_parameters("vision_backbone.fused_featurizer", SIGLIP, towers[1]["embed_dim"],
                              towers[1]["depth"], towers[1]["num_heads"]))
    vision, llm = towers[0]["embed_dim"] + towers[1]["embed_dim"], text["hidden_size"]
    p.update({"projector.fc1.weight": (4 * vision, vision), "projector.fc1.bias": (4 * vision,),
              "projector.fc2.weight": (llm, 4 * vision), "projector.fc2.bias": (llm,),
              "projector.fc3.weight": (llm, llm), "projector.fc3.bias": (llm,)})
    rows, ffn, head = vocab + PAD_TO, text["intermediate_size"], llm // text["num_attention_heads"]
    kv = head * text["num_key_value_heads"]
    p.update({"language_model.model.embed_tokens.weight": (rows, llm), "language_model.model.norm.weight": (llm,),
              "language_model.lm_head.weight": (rows, llm)})
    for i in range(text["num_hidden_layers"]):
        b = f"language_model.model.layers.{i}"
        p.update({f"{b}.self_attn.q_proj.weight": (llm, llm), f"{b}.self_attn.k_proj.weight": (kv, llm),
                  f"{b}.self_attn.v_proj.weight": (kv, llm), f"{b}.self_attn.o_proj.weight": (llm, llm),
                  f"{b}.mlp.gate_proj.weight": (ffn, llm), f"{b}.mlp.up_proj.weight": (ffn, llm),
                  f"{b}.mlp.down_proj.weight": (llm, ffn), f"{b}.input_layernorm.weight": (llm,),
                  f"{b}.post_attention_layernorm.weight": (llm,)})
    return p


def random_weights(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    """Weights a random network of this layout might have: norms at 1 (biases 0), LayerScale
    at 0.1, everything else normal with a fan-in scale."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layernorm.weight")):
            t = torch.ones(shape)
        elif name.endswith(("norm.bias", "norm1.bias", "norm2.bias")):
            t = torch.zeros(shape)
        elif name.endswith("scale_factor"):
            t = torch.full(shape, 0.1)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            t = torch.randn(shape, generator=gen) * (fan_in ** -0.5 if len(shape) > 1 else 0.02)
        out[name] = t.contiguous()
    return out


def write_tokenizer(dest: Path, vocab: int = VOCAB) -> None:
    """A Llama-style tokenizer (the package's layout.write_tokenizer): `<unk>` `<s>` `</s>`, 256
    byte-fallback tokens, BPE pieces with `▁` for spaces, filled up to `vocab` pieces; `<PAD>`
    is added as id `vocab`."""
    layout.write_tokenizer(dest, _CORPUS, vocab)


def norm_stats(key: str = "bridge_orig", dim: int = 7) -> dict:
    """Dataset statistics in the published config.json's norm_stats layout."""
    rng = np.random.default_rng(len(key))
    q01 = np.sort(rng.uniform(-1.0, 0.0, dim))
    q99 = q01 + rng.uniform(0.2, 1.0, dim)
    entry = {"mean": ((q01 + q99) / 2).tolist(), "std": ((q99 - q01) / 4).tolist(), "max": (q99 + 0.1).tolist(),
             "min": (q01 - 0.1).tolist(), "q01": q01.tolist(), "q99": q99.tolist(),
             "mask": [True] * (dim - 1) + [False]}
    proprio = {k: [0.0] * dim for k in ("mean", "std", "max", "min", "q01", "q99")}
    return {key: {"action": entry, "proprio": proprio, "num_transitions": 1000, "num_trajectories": 10}}


def write_checkpoint(dest, *, seed: int = 0, stats: dict | None = None, towers=TOWERS, text=TEXT) -> Path:
    """The whole published layout in `dest`; returns `dest`."""
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    text_config = {"model_type": "llama", "pad_token_id": VOCAB, "torch_dtype": "float32",
                   "vocab_size": VOCAB + PAD_TO, **text}
    config = {
        "arch_specifier": "no-align+fused-gelu-mlp",
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                     "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"},
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "image_resize_strategy": "resize-naive",
        "image_sizes": [SIZE, SIZE],
        "llm_backbone_id": "llama2-7b-pure",
        "llm_max_length": 2048,
        "model_type": "openvla",
        "n_action_bins": 256,
        "norm_stats": stats if stats is not None else norm_stats(),
        "output_projector_states": False,
        "pad_to_multiple_of": PAD_TO,
        "pad_token_id": VOCAB,
        "text_config": text_config,
        "timm_model_ids": [DINO, SIGLIP],
        "timm_override_act_layers": [None, None],
        "torch_dtype": "float32",
        "transformers_version": "4.40.1",
        "use_fused_vision_backbone": True,
        "vision_backbone_id": "dinosiglip-vit-so-224px",
        "vision_tower_overrides": towers,
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    weights = random_weights(published_parameters(towers, text), seed)
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    layout.write_processor(dest, SIZE)
    write_tokenizer(dest)
    return dest
