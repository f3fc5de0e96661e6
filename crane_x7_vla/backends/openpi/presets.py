"""Model sizes for the OpenPI backend: `tiny` (CPU, tests, demo) and `pi0` (openpi's π0).

A preset fixes the network's shape; the image size, number of cameras, action
horizon, LoRA and precision come from the training run and are stored with the
checkpoint, so a checkpoint always rebuilds the exact network it was trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


#: LoRA adapter groups of a decoder layer, as openpi's LoRA configs name them:
#: "attn" = q, kv and output projections (scaled by alpha / rank), "ffn" = the MLP (unscaled).
LORA_GROUPS = ("attn", "ffn")


@dataclass(frozen=True)
class VisionConfig:
    """A SigLIP-style ViT: patch embedding, learned positions, pre-LN blocks."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int


@dataclass(frozen=True)
class GemmaConfig:
    """A Gemma-style decoder: RMSNorm, GeGLU MLP, RoPE, grouped-query attention."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class ModelConfig:
    vision: VisionConfig
    prefix: GemmaConfig  # the vision-language model (PaliGemma's Gemma in π0)
    expert: GemmaConfig  # the action expert (its own weights, same depth and heads)
    vocab_size: int
    max_token_len: int = 48  # instruction tokens (padded / truncated)
    action_dim: int = 32  # padded width of state and actions
    action_horizon: int = 10
    image_width: int = 224
    image_height: int = 224
    num_cameras: int = 1
    dtype: str = "float32"  # activations and frozen weights; trainable weights stay float32
    lora_rank: int = 0  # LoRA rank of the prefix decoder (0: none)
    lora_alpha: float = 16.0  # attention adapters scale by alpha / rank (MLP adapters are unscaled)
    expert_lora_rank: int = 0  # LoRA rank of the action expert (0: none)
    expert_lora_alpha: float = 16.0
    lora_groups: tuple[str, ...] = ("attn", "ffn")  # which weights of a layer carry adapters (LORA_GROUPS)
    lora_dropout: float = 0.0  # dropout on the input of the LoRA branch, training only
    remat: bool = False  # recompute layer activations in the backward pass

    @property
    def num_patches(self) -> int:
        p = self.vision.patch_size
        return (self.image_height // p) * (self.image_width // p)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def has_lora(self) -> bool:
        return self.lora_rank > 0 or self.expert_lora_rank > 0

    def without_lora(self) -> "ModelConfig":
        return replace(self, lora_rank=0, expert_lora_rank=0)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        if data.get("lora_rank") and "lora_groups" not in data:
            raise ValueError(
                "model_config.lora_rank: these LoRA adapters were trained with an earlier formulation "
                "(head-wise attention output adapter, scaled MLP adapters) that this version does not run; "
                "load the checkpoint's merged/ export or train again"
            )
        data["vision"] = VisionConfig(**data["vision"])
        data["prefix"] = GemmaConfig(**data["prefix"])
        data["expert"] = GemmaConfig(**data["expert"])
        if "lora_groups" in data:
            data["lora_groups"] = tuple(data["lora_groups"])
        return cls(**data)

    def validate(self) -> None:
        """Raise ValueError naming the setting that cannot build a network."""
        p = self.vision.patch_size
        if self.image_width % p or self.image_height % p:
            raise ValueError(
                f"image size {self.image_width}x{self.image_height} is not a multiple of the "
                f"patch size {p} of this model; use e.g. --image-size {max(p, self.image_width // p * p)}x"
                f"{max(p, self.image_height // p * p)}"
            )
        if self.prefix.depth != self.expert.depth:
            raise ValueError("the prefix decoder and the action expert must have the same depth")
        for name in ("num_heads", "num_kv_heads", "head_dim"):
            if getattr(self.prefix, name) != getattr(self.expert, name):
                raise ValueError(f"the prefix decoder and the action expert must share {name}")
        if self.prefix.num_heads % self.prefix.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.vision.width % self.vision.num_heads:
            raise ValueError("vision width must be a multiple of its number of heads")
        if self.action_horizon < 1:
            raise ValueError(f"--action-horizon must be at least 1 (got {self.action_horizon})")
        if self.action_dim < 8:
            raise ValueError(f"action_dim (padded width) must be at least 8 (got {self.action_dim})")
        if self.expert.width % 2:
            raise ValueError("the action expert width must be even (sinusoidal time embedding)")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora-dropout must be in [0, 1) (got {self.lora_dropout})")
        if self.lora_rank < 0 or self.expert_lora_rank < 0:
            raise ValueError(f"--lora-rank must be >= 0 (got {self.lora_rank}, expert {self.expert_lora_rank})")
        unknown = sorted(set(self.lora_groups) - set(LORA_GROUPS))
        if unknown or not self.lora_groups:
            raise ValueError(f"lora_groups must be a non-empty subset of {LORA_GROUPS} (got {self.lora_groups})")


# Tiny: ~1.9M parameters; every code path of the big model, fast on a CPU.
TINY = ModelConfig(
    vision=VisionConfig(width=128, depth=4, mlp_dim=256, num_heads=4, patch_size=16),
    prefix=GemmaConfig(width=128, depth=4, mlp_dim=512, num_heads=4, num_kv_heads=1, head_dim=32),
    expert=GemmaConfig(width=64, depth=4, mlp_dim=256, num_heads=4, num_kv_heads=1, head_dim=32),
    vocab_size=512,
    max_token_len=16,
    action_dim=32,
)

# π0 (openpi): PaliGemma-3B prefix = SigLIP So400m/14 + Gemma 2B, and a Gemma-300M action expert.
PI0 = ModelConfig(
    vision=VisionConfig(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14),
    prefix=GemmaConfig(width=2048, depth=18, mlp_dim=16384, num_heads=8, num_kv_heads=1, head_dim=256),
    expert=GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    vocab_size=257_152,
    max_token_len=48,
    action_dim=32,
    dtype="bfloat16",
    lora_rank=16,  # openpi's gemma_2b_lora
    lora_alpha=16.0,
    expert_lora_rank=32,  # openpi's gemma_300m_lora
    expert_lora_alpha=32.0,
)

PRESETS = {"tiny": TINY, "pi0": PI0}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown OpenPI model preset '{name}' (choose one of: {', '.join(PRESETS)})")
    return PRESETS[name]


def with_depth(cfg: ModelConfig, depth: int) -> ModelConfig:
    """The same widths with `depth` layers everywhere (benchmarks of big presets on small machines)."""
    return replace(
        cfg,
        vision=replace(cfg.vision, depth=depth),
        prefix=replace(cfg.prefix, depth=depth),
        expert=replace(cfg.expert, depth=depth),
    )


__all__ = ["LORA_GROUPS", "VisionConfig", "GemmaConfig", "ModelConfig", "PRESETS", "get_preset", "with_depth"]
