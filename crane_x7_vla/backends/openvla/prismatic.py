"""OpenVLA's model in the layout of the published `openvla/openvla-7b` checkpoint, native here.

The Prismatic design: two vision transformers (DINOv2 ViT-L/14 with 4 registers and SigLIP
So400M/14) read the same picture, each normalised its own way (6 channels, 3 per tower);
each tower's patch tokens after its second-to-last block are concatenated channel-wise, an
MLP projector maps them to the language model's width, and the projected patches are
inserted right after `<s>` in front of the text embeddings of a Llama-2 language model
(transformers' `LlamaForCausalLM`). No `trust_remote_code` and no timm are needed: the towers
are written here with the parameter names of timm's VisionTransformer as the published
checkpoint stores them (`vision_backbone.featurizer.blocks.N.attn.qkv.weight`, LayerScale as
`ls1.scale_factor`, SigLIP's unused attention-pool head `fused_featurizer.attn_pool.*`), the
projector as `projector.fc1/fc2/fc3`, the language model as `language_model.model.*` and
`language_model.lm_head.weight`.

`config.json` is read with the published fields (`vision_backbone_id`, `timm_model_ids`,
`image_sizes`, `use_fused_vision_backbone`, `text_config`, `pad_to_multiple_of`,
`norm_stats`, `n_action_bins`, ...); the tower sizes come from the timm model ids. A
checkpoint of ours may carry `vision_tower_overrides` (one mapping per tower, e.g.
`{"embed_dim": 32, "depth": 3, "num_heads": 2, "patch_size": 8}`) for towers smaller than
the published ones (the `tiny` preset, the tests' tiny checkpoints), and `image_token_index`:
the id of a marker token after which a prompt row may place the picture instead of after
`<s>` (the `tiny` preset's `--image-position after_instruction`). The published model has
neither, and a row without the marker gets the picture after `<s>` as published.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

IGNORE_INDEX = -100
MODEL_TYPE = "openvla"

# The vision towers of the published Prismatic checkpoints, by timm model id: what timm's
# VisionTransformer builds for that id (widths, registers, class token, LayerScale, the
# attention-pool head that SigLIP carries but the VLA never runs).
TOWERS: dict[str, dict] = {
    "vit_large_patch14_reg4_dinov2.lvd142m": dict(
        embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, patch_size=14, class_token=True, reg_tokens=4,
        no_embed_class=True, layer_scale=True, attn_pool=False),
    "vit_so400m_patch14_siglip_224": dict(
        embed_dim=1152, depth=27, num_heads=16, mlp_ratio=3.7362, patch_size=14, class_token=False, reg_tokens=0,
        no_embed_class=False, layer_scale=False, attn_pool=True),
    "vit_so400m_patch14_siglip_384": dict(
        embed_dim=1152, depth=27, num_heads=16, mlp_ratio=3.7362, patch_size=14, class_token=False, reg_tokens=0,
        no_embed_class=False, layer_scale=False, attn_pool=True),
}
TOWER_OVERRIDES = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size")

# vision_backbone_id -> (timm model ids, image sizes), as the published configuration maps them
VISION_BACKBONES: dict[str, tuple[list[str], list[int]]] = {
    "dinov2-vit-l": (["vit_large_patch14_reg4_dinov2.lvd142m"], [224]),
    "siglip-vit-so400m": (["vit_so400m_patch14_siglip_224"], [224]),
    "siglip-vit-so400m-384px": (["vit_so400m_patch14_siglip_384"], [384]),
    "dinosiglip-vit-so-224px": (["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"], [224, 224]),
    "dinosiglip-vit-so-384px": (["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_384"], [384, 384]),
}
LLM_BACKBONES = {  # llm_backbone_id -> the language model it was initialised from (informational)
    "llama2-7b-pure": "meta-llama/Llama-2-7b-hf", "llama2-13b-pure": "meta-llama/Llama-2-13b-hf",
    "llama2-7b-chat": "meta-llama/Llama-2-7b-chat-hf", "llama2-13b-chat": "meta-llama/Llama-2-13b-chat-hf",
    "vicuna-v15-7b": "lmsys/vicuna-7b-v1.5", "vicuna-v15-13b": "lmsys/vicuna-13b-v1.5",
}


class OpenVLAConfig(PretrainedConfig):
    """The published `config.json` of an OpenVLA checkpoint (model_type "openvla")."""

    model_type = MODEL_TYPE

    def __init__(self, vision_backbone_id: str = "dinosiglip-vit-so-224px", llm_backbone_id: str = "llama2-7b-pure",
                 arch_specifier: str = "no-align+fused-gelu-mlp", use_fused_vision_backbone: bool | None = None,
                 image_resize_strategy: str = "resize-naive", text_config: dict | LlamaConfig | None = None,
                 llm_max_length: int = 2048, pad_token_id: int = 32000, pad_to_multiple_of: int = 64,
                 output_projector_states: bool = False, norm_stats: dict | None = None, n_action_bins: int = 256,
                 vision_tower_overrides: list[dict] | None = None, image_token_index: int | None = None,
                 **kwargs):
        if vision_backbone_id not in VISION_BACKBONES:
            raise ValueError(f"config.json: vision_backbone_id '{vision_backbone_id}' is not supported "
                             f"(supported: {', '.join(sorted(VISION_BACKBONES))})")
        timm_ids, sizes = VISION_BACKBONES[vision_backbone_id]
        given_ids = kwargs.pop("timm_model_ids", None)
        if given_ids is not None and list(given_ids) != timm_ids:
            raise ValueError(f"config.json: timm_model_ids {given_ids} do not belong to vision_backbone_id "
                             f"'{vision_backbone_id}' ({timm_ids})")
        sizes = [int(s) for s in kwargs.pop("image_sizes", sizes)]
        self.vision_backbone_id = vision_backbone_id
        self.llm_backbone_id = llm_backbone_id
        self.arch_specifier = arch_specifier
        self.output_projector_states = output_projector_states
        self.use_fused_vision_backbone = (len(timm_ids) == 2 if use_fused_vision_backbone is None
                                          else bool(use_fused_vision_backbone))
        if self.use_fused_vision_backbone != (len(timm_ids) == 2):
            raise ValueError(f"config.json: use_fused_vision_backbone is {use_fused_vision_backbone}, but "
                             f"'{vision_backbone_id}' has {len(timm_ids)} tower(s)")
        self.timm_model_ids = list(timm_ids)
        self.timm_override_act_layers = list(kwargs.pop("timm_override_act_layers", [None] * len(timm_ids)))
        if any(a is not None for a in self.timm_override_act_layers):
            raise ValueError(f"config.json: timm_override_act_layers {self.timm_override_act_layers} are not "
                             f"supported (the DINOv2 and SigLIP towers use GELU)")
        self.image_sizes = sizes
        self.image_resize_strategy = image_resize_strategy
        self.hf_llm_id = kwargs.pop("hf_llm_id", LLM_BACKBONES.get(llm_backbone_id, ""))
        self.llm_max_length = llm_max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        if isinstance(text_config, LlamaConfig):
            self.text_config = text_config
        else:
            text = dict(text_config or {})
            model_type = text.pop("model_type", "llama")
            if model_type != "llama":
                raise ValueError(f"config.json: text_config.model_type '{model_type}' is not supported (llama only)")
            self.text_config = LlamaConfig(**text)
        self.norm_stats = norm_stats
        self.n_action_bins = n_action_bins
        overrides = [dict(o) for o in (vision_tower_overrides or [])]
        if overrides and len(overrides) != len(timm_ids):
            raise ValueError(f"config.json: vision_tower_overrides needs one entry per tower ({len(timm_ids)})")
        for o in overrides:
            unknown = sorted(set(o) - set(TOWER_OVERRIDES))
            if unknown:
                raise ValueError(f"config.json: vision_tower_overrides: unknown key(s) {unknown} "
                                 f"(known: {', '.join(TOWER_OVERRIDES)})")
        self.vision_tower_overrides = overrides or None
        self.image_token_index = None if image_token_index is None else int(image_token_index)
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    def tower_specs(self) -> list[dict]:
        """The architecture of each vision tower (the published sizes, with any overrides)."""
        specs = []
        for i, timm_id in enumerate(self.timm_model_ids):
            spec = dict(TOWERS[timm_id], img_size=self.image_sizes[i])
            if self.vision_tower_overrides:
                spec.update(self.vision_tower_overrides[i])
            specs.append(spec)
        return specs

    @property
    def num_patches(self) -> int:
        spec = self.tower_specs()[0]
        return (spec["img_size"] // spec["patch_size"]) ** 2

    @property
    def action_vocab_size(self) -> int:
        """The tokenizer's vocabulary without the padding rows of the embedding (OpenVLA's vocab_size)."""
        return int(self.text_config.vocab_size) - int(self.pad_to_multiple_of)

    def to_dict(self) -> dict:
        """As the published config.json has it: `text_config` holds what differs from Llama's
        defaults (and its model_type, vocab_size and pad_token_id)."""
        out = super().to_dict()
        for extension in ("vision_tower_overrides", "image_token_index"):  # absent from the published config
            if out.get(extension) is None:
                out.pop(extension, None)
        text = self.text_config.to_dict()
        defaults = LlamaConfig().to_dict()
        compact = {k: v for k, v in text.items()
                   if k not in ("transformers_version", "_name_or_path") and (k not in defaults or defaults[k] != v)}
        compact.update(model_type="llama", vocab_size=text["vocab_size"], pad_token_id=text["pad_token_id"])
        out["text_config"] = dict(sorted(compact.items()))
        return out


# ---- the vision towers, with timm's parameter names ---------------------------------------


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _LayerScale(nn.Module):
    """timm's LayerScale with its `gamma` stored as `scale_factor` (as the published checkpoint has it)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale_factor = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class _Block(GradientCheckpointingLayer):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, layer_scale: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.ls1 = _LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = _LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _AttentionPool(nn.Module):
    """SigLIP's attention-pool head (timm's AttentionPoolLatent): stored in the checkpoint, never
    run by the VLA, which reads the patch tokens of an earlier block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))


class VisionTower(nn.Module):
    """A timm VisionTransformer as Prismatic uses it: the patch tokens (prefix tokens dropped,
    no final norm) after the second-to-last block."""

    def __init__(self, spec: dict):
        super().__init__()
        dim, grid = spec["embed_dim"], spec["img_size"] // spec["patch_size"]
        self.no_embed_class = spec["no_embed_class"]
        self.patch_embed = _PatchEmbed(spec["patch_size"], dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if spec["class_token"] else None
        self.reg_token = nn.Parameter(torch.zeros(1, spec["reg_tokens"], dim)) if spec["reg_tokens"] else None
        self.num_prefix_tokens = int(spec["class_token"]) + spec["reg_tokens"]
        positions = grid * grid + (0 if self.no_embed_class else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, positions, dim))
        self.blocks = nn.ModuleList(_Block(dim, spec["num_heads"], spec["mlp_ratio"], spec["layer_scale"])
                                    for _ in range(spec["depth"]))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn_pool = _AttentionPool(dim, spec["num_heads"], spec["mlp_ratio"]) if spec["attn_pool"] else None
        self.embed_dim = dim

    def unused_modules(self) -> list[str]:
        """Submodules stored in the checkpoint that the VLA's forward pass never runs."""
        names = [f"blocks.{len(self.blocks) - 1}", "norm"]
        return names + (["attn_pool"] if self.attn_pool is not None else [])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:
            x = torch.cat(prefix + [x + self.pos_embed], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        for block in self.blocks[:-1]:
            x = block(x)
        return x[:, self.num_prefix_tokens:]


class PrismaticVisionBackbone(nn.Module):
    def __init__(self, config: OpenVLAConfig):
        super().__init__()
        specs = config.tower_specs()
        self.featurizer = VisionTower(specs[0])
        self.fused_featurizer = VisionTower(specs[1]) if config.use_fused_vision_backbone else None
        self.embed_dim = sum(s["embed_dim"] for s in specs)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.fused_featurizer is None:
            return self.featurizer(pixel_values)
        first, second = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self.featurizer(first), self.fused_featurizer(second)], dim=2)


class PrismaticProjector(nn.Module):
    def __init__(self, fused: bool, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
            self.act_fn2 = nn.GELU()
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act_fn1(self.fc1(patches)))
        return self.fc3(self.act_fn2(x)) if self.fused else x


# ---- the model ---------------------------------------------------------------------------


class OpenVLAForActionPrediction(PreTrainedModel):
    """OpenVLA: vision towers + projector + Llama, with the published parameter names.

    forward(input_ids, attention_mask, pixel_values, labels, cache (or past_key_values), use_cache):
    with pixel values, the projected patches go right after the first token (`<s>`), or after
    the row's marker token where the config has `image_token_index` and the row holds it; the
    attention mask and labels are widened to match (labels ignored on the patches), and the
    logits cover the whole sequence (patches included). Without pixel values the language
    model runs on the text alone; with a non-empty cache only the new tokens are fed, and an
    attention mask over the text (prompt + written tokens) is widened by the patches."""

    config_class = OpenVLAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["PrismaticProjector", "_Block", "LlamaDecoderLayer"]
    _skip_keys_device_placement = "past_key_values"

    def __init__(self, config: OpenVLAConfig):
        super().__init__(config)
        self.vision_backbone = PrismaticVisionBackbone(config)
        self.projector = PrismaticProjector(config.use_fused_vision_backbone, self.vision_backbone.embed_dim,
                                            config.text_config.hidden_size)
        text_config = config.text_config
        text_config._attn_implementation = config._attn_implementation
        self.language_model = LlamaForCausalLM(text_config)
        self.post_init()

    def _init_weights(self, module):
        std = getattr(self.config.text_config, "initializer_range", 0.02)
        if isinstance(module, VisionTower):
            init.normal_(module.pos_embed, std=0.02)
            for token in (module.cls_token, module.reg_token):
                if token is not None:
                    init.normal_(token, std=1e-6)
        elif isinstance(module, _LayerScale):
            init.constant_(module.scale_factor, 1e-5)
        elif isinstance(module, _AttentionPool):
            init.normal_(module.latent, std=module.latent.shape[-1] ** -0.5)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self):
        return self.language_model.get_decoder()

    def unused_modules(self) -> list[str]:
        """Names of submodules the forward pass never runs (each tower's last block and final
        norm, SigLIP's attention pool): kept for the checkpoint's sake, never trained."""
        names = [f"vision_backbone.featurizer.{n}" for n in self.vision_backbone.featurizer.unused_modules()]
        if self.vision_backbone.fused_featurizer is not None:
            names += [f"vision_backbone.fused_featurizer.{n}"
                      for n in self.vision_backbone.fused_featurizer.unused_modules()]
        return names

    @property
    def num_patches(self) -> int:
        return self.config.num_patches

    def _widen_mask(self, mask: torch.Tensor | None, total: int) -> torch.Tensor | None:
        """An attention mask over the text -> one over text and patches (ones after the first
        token; the same as after a marker wherever the rows are not left-padded)."""
        if mask is None or mask.shape[1] == total:
            return mask
        if mask.shape[1] + self.num_patches != total:
            raise ValueError(f"attention_mask covers {mask.shape[1]} positions; the sequence has {total} "
                             f"({self.num_patches} of them image patches)")
        ones = torch.ones((mask.shape[0], self.num_patches), dtype=mask.dtype, device=mask.device)
        return torch.cat([mask[:, :1], ones, mask[:, 1:]], dim=1)

    def image_offsets(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B,) the position after which each row's patches go: its marker token
        (config.image_token_index) where the row has one, else its first token (`<s>`)."""
        marker = self.config.image_token_index
        if marker is None:
            return torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        found = input_ids == marker
        if bool((found.sum(1) > 1).any()):
            raise ValueError(f"a prompt holds the image marker (token {marker}) more than once")
        return torch.where(found.any(1), found.long().argmax(1), torch.zeros_like(found[:, 0], dtype=torch.long))

    @staticmethod
    def _insert(text: torch.Tensor, patches: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) text and (B, N, ...) patches -> (B, L + N, ...): row b's patches right
        after its text position after[b]."""
        b, n, length = text.shape[0], patches.shape[1], text.shape[1]
        j = torch.arange(length + n, device=text.device).expand(b, -1)
        start = after[:, None] + 1
        is_patch = (j >= start) & (j < start + n)
        text_index = torch.where(j < start, j, j - n).clamp(0, length - 1)
        patch_index = (j - start).clamp(0, n - 1)
        shape = (b, length + n) + (1,) * (text.dim() - 2)
        tail = text.shape[2:]

        def take(src, index):
            return src.gather(1, index.view(shape).expand(shape[:2] + tail))

        return torch.where(is_patch.view(shape), take(patches, patch_index), take(text, text_index))

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.FloatTensor | None = None, labels: torch.LongTensor | None = None,
                cache=None, use_cache: bool | None = None, inputs_embeds: torch.FloatTensor | None = None,
                past_key_values=None, **kwargs) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values  # the keyword OpenVLA's own code uses
        use_cache = bool(use_cache) and not self.training
        cached = cache is not None and cache.get_seq_length() > 0
        if cached or pixel_values is None:
            if cached:
                total = cache.get_seq_length() + input_ids.shape[1]
                attention_mask = self._widen_mask(attention_mask, total)
            return self.language_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                       cache=cache, use_cache=use_cache, inputs_embeds=inputs_embeds, **kwargs)
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"{input_ids.shape[0]} prompts but {pixel_values.shape[0]} pictures: "
                             f"give one picture per prompt")
        patches = self.projector(self.vision_backbone(pixel_values.to(self.projector.fc1.weight.dtype)))
        embeds = self.get_input_embeddings()(input_ids)
        after = self.image_offsets(input_ids)
        embeds = self._insert(embeds, patches.to(embeds.dtype), after)
        if attention_mask is not None and attention_mask.shape[1] != embeds.shape[1]:
            if attention_mask.shape[1] != input_ids.shape[1]:
                raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions, input_ids "
                                 f"{input_ids.shape[1]}")
            ones = torch.ones(patches.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = self._insert(attention_mask, ones, after)
        if labels is not None:
            ignore = torch.full(patches.shape[:2], IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
            labels = self._insert(labels, ignore, after)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels,
                                   cache=cache, use_cache=use_cache, **kwargs)


# ---- the published processor files --------------------------------------------------------


def is_openvla_dir(path) -> bool:
    """A model folder whose config.json says model_type "openvla" (the published layout)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError):
        return False


def read_image_processing(model_dir) -> dict:
    """What OpenVLA's image processor does to a picture, from preprocessor_config.json: the
    per-tower normalisation (the `tvf_normalize_params` it applies, else `means`/`stds`), the
    resize (size and PIL interpolation code) and the letterbox padding."""
    path = Path(model_dir) / "preprocessor_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; an OpenVLA model folder holds its image processor's settings there")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if data.get("tvf_normalize_params"):
        stats = [(list(p["mean"]), list(p["std"])) for p in data["tvf_normalize_params"]]
    elif data.get("means") and data.get("stds"):
        stats = [(list(m), list(s)) for m, s in zip(data["means"], data["stds"])]
    else:
        raise ValueError(f"{path}: no means/stds (nor tvf_normalize_params): the picture's normalisation is unknown")
    if any(len(m) != 3 or len(s) != 3 for m, s in stats):
        raise ValueError(f"{path}: every tower's mean and std must have 3 values (RGB)")
    resize = (data.get("tvf_resize_params") or [{}])[0]
    sizes = data.get("input_sizes") or [[3, 224, 224]]
    size = resize.get("size") or [sizes[0][1], sizes[0][2]]
    size = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
    strategy = data.get("image_resize_strategy", "resize-naive")
    return {"stats": stats, "size": size, "interpolation": int(resize.get("interpolation", 3)),
            "letterbox": bool(data.get("tvf_do_letterbox", strategy == "letterbox")),
            "letterbox_fill": data.get("tvf_letterbox_fill"), "resize_strategy": strategy,
            "crop": [int(c) for c in ((data.get("tvf_crop_params") or [{}])[0].get("output_size") or size)]}


def openvla_image(image, processing: dict):
    """An RGB uint8 picture (H, W, 3) prepared as OpenVLA's image processor prepares it, up to
    the normalisation: letterbox padding when configured, the PIL resize (bicubic for the
    published model; a single size resizes the shorter side) and the centre crop. Returns
    uint8 (h, w, 3)."""
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    if processing["letterbox"]:
        w, h = img.size
        side = max(w, h)
        fill = tuple(processing["letterbox_fill"] or (0, 0, 0))
        canvas = Image.new("RGB", (side, side), fill)
        canvas.paste(img, (int((side - w) / 2), int((side - h) / 2)))
        img = canvas
    height, width = processing["size"]
    if processing["resize_strategy"] == "resize-crop" and height == width:
        w, h = img.size
        short = min(w, h)
        target = (width, int(h * width / short)) if w == short else (int(w * height / short), height)
        img = img.resize(target, resample=processing["interpolation"])
    else:
        img = img.resize((width, height), resample=processing["interpolation"])
    ch, cw = processing["crop"]
    w, h = img.size
    if (cw, ch) != (w, h):
        left, top = int(round((w - cw) / 2.0)), int(round((h - ch) / 2.0))
        img = img.crop((left, top, left + cw, top + ch))
    return np.asarray(img, dtype=np.uint8)
