"""Base models for the OpenVLA backend: load one, and turn observations into its inputs.

Supported: OpenVLA checkpoints in the published `openvla/openvla-7b` layout (our own
`prismatic.OpenVLAForActionPrediction`, no remote code; the picture's patches are inserted
after BOS without placeholder tokens), Llava-family models (`<image>` placeholders, one per
visual token) and PaliGemma-family models (placeholders before BOS, prefix-LM token types),
by hub id or local path. The `tiny` preset is OpenVLA's own architecture at tiny size with
random weights and a Llama-style tokenizer trained offline, written to a directory in the
published layout and then loaded by `load_vla` like any OpenVLA checkpoint.
"""

from __future__ import annotations

import inspect
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from crane_x7_vla.backends.openvla.prompt import (
    GOAL_FIRST_TEMPLATE,
    IMAGE_FIRST,
    IMAGE_POSITIONS,
    STATE_TEMPLATE,
    goal_first_prompt,
    openvla_prompt,
    split_at_question,
    state_prompt_parts,
)
from crane_x7_vla.backends.openvla.config import ACTION_HEADS, PARALLEL_L1, TOKEN_HEAD  # noqa: F401
from crane_x7_vla.training.config import ConfigError

IGNORE = -100


class ModelError(ConfigError):
    """The base model cannot be used as asked (--model); the message says why and what to do."""


# ---- the tiny preset ---------------------------------------------------------------------

PRESETS = {
    # OpenVLA's architecture (DINOv2 + SigLIP towers fused channel-wise, MLP projector, Llama)
    # at ~1.3M parameters: 64x64 picture -> 64 patches of 8 pixels per tower (with 16-pixel
    # ones, 16 patches, a patch can hold two cubes and a preset never learned which cube a
    # colour names). Each tower runs all but its last block, as OpenVLA's do. For tests, CPU
    # runs and the demo.
    "tiny": dict(
        towers=[
            dict(embed_dim=48, depth=4, num_heads=4, patch_size=8),
            dict(embed_dim=48, depth=4, num_heads=4, patch_size=8),
        ],
        text=dict(
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=1024,
        ),
        text_vocab=768,
        vocab=1024,
    ),
}
# The marker token after which a preset's prompt may put the picture (--image-position)
IMAGE_MARKER = "<image>"

_CORPUS = """In: What action should the robot take to reach the red cube?
Out: pick up the blue block and place it in the box. Pick and place the object.
reach the green cube, push the yellow button, open the drawer, close the gripper, move the arm left right up down
grasp the cup and put it on the plate. stack the red block on the green block. touch the ball with the hand
the robot arm moves to the target position slowly. go home. lift the object off the table
"""


def is_preset(name: str) -> bool:
    return name in PRESETS


def looks_like_path(source: str) -> bool:
    """A model source written as a folder (a hub id is `name` or `org/name`)."""
    source = str(source)
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


# How policy_config.json's openvla.base_source says where an adapter's base model is:
BASE_IN_CHECKPOINT = "checkpoint"  # base/ beside adapter/ (a preset, or resumed from a checkpoint with base/)
BASE_DIRECTORY = "directory"  # a model folder on the training machine (openvla.base_model_dir)
BASE_HUB = "hub"  # the model hub id given to train --model


def checkpoint_model_source(checkpoint_dir, config: dict) -> tuple[str, bool]:
    """Where an OpenVLA checkpoint's model loads from, and whether that is a local folder.

    model/ (full weights) or base/ when the checkpoint holds them. Otherwise the adapter's
    base model as policy_config.json names it: a preset (which the training always writes
    into base/) or a folder must be on this machine, and their absence is an error naming
    the missing path; only a hub id given to ``train --model`` is looked up on the model hub."""
    from crane_x7_vla.checkpoint_contract import CheckpointError, config_path

    d = Path(checkpoint_dir)
    where = config_path(d)
    info = config.get("openvla") or {}
    if (d / "model").is_dir():
        return str(d / "model"), True
    if info.get("weights") == "model":
        raise CheckpointError(
            f"{d / 'model'}: missing. This checkpoint was trained with full weights "
            f"(--no-use-lora), which are kept there; copy the whole checkpoint directory again"
        )
    if not (d / "adapter").is_dir():
        raise CheckpointError(
            f"{d / 'adapter'}: missing, and there is no model/ either: {d} holds no trained "
            f"weights; copy the whole checkpoint directory again"
        )
    if (d / "base").is_dir():
        return str(d / "base"), True
    base = config.get("base_model")
    kind = info.get("base_source")
    if not isinstance(base, str) or not base:
        raise CheckpointError(f"{where}: field 'base_model' is missing, so the base model of adapter/ is unknown")
    if kind == BASE_IN_CHECKPOINT or (kind is None and is_preset(base)):
        raise CheckpointError(
            f"{d / 'base'}: missing. The adapter in {d / 'adapter'} was trained on the base model '{base}', which the "
            f"training wrote into base/ beside it; copy the whole checkpoint directory again, base/ included "
            f"(a checkpoint's own part is never looked up on the model hub)"
        )
    folder = info.get("base_model_dir") or (base if kind == BASE_DIRECTORY or looks_like_path(base) else None)
    if folder is None and kind is None and Path(base).expanduser().is_dir():
        folder = base
    if folder is not None:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise CheckpointError(
                f"{path}: no such base model directory. The adapter in {d / 'adapter'} was trained on the model in "
                f"that folder ({where}: base_model '{base}'); put the folder there again"
            )
        return str(path), True
    return base, False  # a model hub id given to train --model


def apply_adapter(model, adapter_dir, *, merge: bool = True):
    """The model with the LoRA adapter saved in `adapter_dir` (merged into its weights with
    merge=True); an unreadable or mismatching adapter is a CheckpointError naming its files."""
    from peft import PeftModel

    from crane_x7_vla.checkpoint_contract import CheckpointError

    adapter_dir = Path(adapter_dir)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    except Exception as exc:  # noqa: BLE001 - safetensors, json and torch each raise their own kinds
        raise CheckpointError(
            f"{adapter_dir}: the LoRA adapter cannot be loaded ({_first_line(exc)}); "
            "the checkpoint is damaged: copy it again or train again"
        ) from None
    return peft_model.merge_and_unload() if merge else peft_model


def load_adapter_weights(model, weights_file) -> None:
    """Load a saved adapter_model.safetensors into a PEFT model (resuming training); CheckpointError
    naming the file when it is unreadable or does not fit the model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from crane_x7_vla.checkpoint_contract import CheckpointError

    try:
        set_peft_model_state_dict(model, load_file(str(weights_file)))
    except Exception as exc:  # noqa: BLE001 - safetensors and torch each raise their own kinds
        raise CheckpointError(
            f"{weights_file}: the LoRA adapter cannot be loaded ({_first_line(exc)}); resume from another checkpoint"
        ) from None


def torch_device(name: str | None) -> torch.device:
    """The PyTorch device called `name` (auto/None: a CUDA GPU when there is one, else the CPU);
    ConfigError for a name that is not cpu, cuda or cuda:N, or a GPU PyTorch cannot see."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {str(name)[:80]!r} is not a device: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: no CUDA GPU is visible to PyTorch")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return device


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def materialize_preset(name: str, dest, *, image_size: tuple[int, int], seed: int = 0) -> Path:
    """Build preset `name` for `image_size` (random weights from `seed`) and write it to `dest`
    in the published OpenVLA layout: config.json, model.safetensors, the processor's settings
    and a Llama-style tokenizer whose last 256 pieces no text produces (the action tokens),
    with `<PAD>` and the picture marker added after them."""
    from crane_x7_vla.backends.openvla.layout import write_processor, write_tokenizer
    from crane_x7_vla.backends.openvla.prismatic import OpenVLAConfig, OpenVLAForActionPrediction

    if name not in PRESETS:
        raise ModelError(f"unknown preset '{name}' (presets: {sorted(PRESETS)})")
    p = PRESETS[name]
    patch = p["towers"][0]["patch_size"]
    w, h = image_size
    if w != h or w % patch:
        raise ModelError(
            f"the '{name}' preset needs a square image whose side is a multiple of {patch} "
            f"(got --image-size {w}x{h}; e.g. 64x64, 96x96, 128x128)"
        )
    dest = Path(dest)
    vocab, pad_to = p["vocab"], 64
    write_tokenizer(dest, _CORPUS, vocab, p["text_vocab"], extra_tokens=[IMAGE_MARKER])
    pad_id, marker = vocab, vocab + 1  # added after the vocabulary, as OpenVLA adds <PAD>
    config = OpenVLAConfig(
        vision_backbone_id="dinosiglip-vit-so-224px",
        image_sizes=[w, w],
        vision_tower_overrides=p["towers"],
        text_config=dict(p["text"], vocab_size=vocab + pad_to, pad_token_id=pad_id, bos_token_id=1, eos_token_id=2),
        pad_token_id=pad_id,
        pad_to_multiple_of=pad_to,
        image_token_index=marker,
        norm_stats={},
        llm_max_length=p["text"]["max_position_embeddings"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OpenVLAForActionPrediction(config)
    model.save_pretrained(dest)
    write_processor(dest, w)
    return dest


# ---- loading any supported model ---------------------------------------------------------


@dataclass
class VLA:
    model: torch.nn.Module  # the HF model (wrapped by PEFT / DDP later by the trainer)
    tokenizer: object
    family: str  # openvla | llava | paligemma
    source: str  # path or hub id it was loaded from
    image_size: tuple[int, int]
    image_token_id: int | None
    # placeholders in input_ids: for openvla 0, or 1 (the marker after which the picture may go)
    num_image_tokens: int
    pixel_stats: list[tuple[list[float], list[float]]]  # (mean, std) per stacked vision backbone
    cache_kw: str  # forward keyword of the KV cache ("cache" or "past_key_values")
    dtype: torch.dtype
    num_cameras: int = 1  # images per sample (several only for Llava-family models)
    # OpenVLA's own image processing (prismatic.read_image_processing), for pictures prepared as
    # OpenVLA's processor prepares them; None for other families
    processing: dict | None = None
    image_position: str = IMAGE_FIRST  # prompt.IMAGE_POSITIONS; set from the run's config
    # text -> token ids (text_ids): a batch tokenises the same few instructions and templates
    # again and again; remembering them made a tiny model's CPU training step about 1 % faster
    text_cache: dict = field(default_factory=dict, repr=False)
    # the ParallelActionHead of --action-head parallel-l1 (None: the token head)
    action_head: torch.nn.Module | None = None

    @property
    def vocab_size(self) -> int:
        """Base vocabulary size; actions use its last 256 ids."""
        return int(self.tokenizer.vocab_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _family(config) -> str:
    mt = getattr(config, "model_type", "")
    if mt in ("openvla", "prismatic"):
        return "openvla"
    if mt.startswith("paligemma"):
        return "paligemma"
    if getattr(config, "image_token_index", None) is not None or getattr(config, "image_token_id", None) is not None:
        return "llava"
    raise ModelError(
        f"model type '{mt}' is not supported: use openvla/openvla-7b, a Llava- or PaliGemma-family "
        f"image-text-to-text model, or the 'tiny' preset"
    )


def _model_class(config, source: str, local: bool = False):
    auto_map = getattr(config, "auto_map", None) or {}
    for key in ("AutoModelForVision2Seq", "AutoModelForImageTextToText"):
        if key in auto_map:
            from transformers.dynamic_module_utils import get_class_from_dynamic_module

            return get_class_from_dynamic_module(auto_map[key], source, local_files_only=local)
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText


def _expected_size(config, family: str) -> tuple[int, int] | None:
    if family == "openvla":
        sizes = getattr(config, "image_sizes", None)
        return (int(sizes[0]), int(sizes[0])) if sizes else None
    vision = getattr(config, "vision_config", None)
    size = getattr(vision, "image_size", None)
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else (int(size[1]), int(size[0]))


def _num_image_tokens(config, family: str) -> int:
    if family == "openvla":
        return 0
    vision = config.vision_config
    size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
    n = (size // vision.patch_size) ** 2
    if family == "paligemma":
        return int(getattr(config.text_config, "num_image_tokens", None) or n)
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    if strategy == "full" and getattr(vision, "model_type", "") == "clip_vision_model":
        n += 1  # CLIP's class token is kept
    return n


def _pixel_stats(source: str, local: bool = False) -> list[tuple[list[float], list[float]]]:
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(source, use_fast=False, local_files_only=local)
    except OSError:  # no image processor saved: the common SigLIP/PaliGemma default
        return [([0.5] * 3, [0.5] * 3)]
    return [(list(proc.image_mean), list(proc.image_std))]


def _config_dict(source: str, local: bool) -> dict:
    """The model's config.json as a dict (read without running any of the model's code)."""
    from transformers import PretrainedConfig

    try:
        return PretrainedConfig.get_config_dict(source, local_files_only=local)[0]
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model '{source}': {exc}") from None


def _model_file(source: str, name: str, local: bool) -> Path:
    from transformers.utils import cached_file

    try:
        return Path(cached_file(source, name, local_files_only=local))
    except OSError as exc:
        raise ModelError(f"model '{source}': {name} is missing ({exc})") from None


def _load_openvla(source: str, *, image_size, dtype, attn_implementation, device, local: bool) -> VLA:
    """An OpenVLA checkpoint in the published layout, with our own model class."""
    from transformers import AutoTokenizer

    from crane_x7_vla.backends.openvla.prismatic import OpenVLAConfig, OpenVLAForActionPrediction, read_image_processing

    try:
        config = OpenVLAConfig.from_pretrained(source, local_files_only=local)
    except ValueError as exc:
        raise ModelError(f"model '{source}': {exc}") from None
    side = int(config.image_sizes[0])
    if tuple(image_size) != (side, side):
        raise ModelError(f"model '{source}' takes {side}x{side} images; pass --image-size {side}x{side}")
    kwargs = {"dtype": dtype, "local_files_only": local}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model, info = OpenVLAForActionPrediction.from_pretrained(source, config=config, output_loading_info=True, **kwargs)
    missing, unexpected = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    if missing or unexpected:
        raise ModelError(
            f"model '{source}': its weights do not have OpenVLA's parameter names "
            f"(missing: {missing[:5]}{'...' if len(missing) > 5 else ''}; "
            f"unexpected: {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    processor_file = _model_file(source, "preprocessor_config.json", local)
    try:
        processing = read_image_processing(processor_file.parent)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    if len(processing["stats"]) != (2 if config.use_fused_vision_backbone else 1):
        raise ModelError(
            f"{processor_file}: normalisation for {len(processing['stats'])} tower(s), the model has "
            f"{2 if config.use_fused_vision_backbone else 1}"
        )
    # the config is handed over, so that the tokenizer does not look for the model's remote code
    tokenizer = AutoTokenizer.from_pretrained(source, config=config, trust_remote_code=False, local_files_only=local)
    if tokenizer.vocab_size != config.action_vocab_size:
        raise ModelError(
            f"model '{source}': the tokenizer has {tokenizer.vocab_size} tokens, config.json's "
            f"text_config.vocab_size - pad_to_multiple_of is {config.action_vocab_size}"
        )
    marker = config.image_token_index
    if marker is not None and not 0 <= marker < config.text_config.vocab_size:
        raise ModelError(
            f"model '{source}': config.json's image_token_index {marker} is outside the embedding "
            f"({config.text_config.vocab_size} rows)"
        )
    return VLA(
        model=model.to(device),
        tokenizer=tokenizer,
        family="openvla",
        source=str(source),
        image_size=(side, side),
        image_token_id=marker,
        num_image_tokens=0 if marker is None else 1,
        pixel_stats=processing["stats"],
        cache_kw="cache",
        dtype=dtype,
        processing=processing,
    )


def load_vla(
    source: str,
    *,
    image_size: tuple[int, int],
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    device: str | torch.device = "cpu",
) -> VLA:
    """Load a base model from a local path or hub id, the standard way."""
    from transformers import AutoConfig, AutoTokenizer

    local = Path(source).expanduser().is_dir()
    if looks_like_path(source) and not local:
        raise ModelError(
            f"--model {source}: no such model directory (give a local model directory, a hub id "
            f"like openvla/openvla-7b, or a preset: {', '.join(sorted(PRESETS))})"
        )
    # A folder on this machine is read from disk only: nothing is looked up on the model hub.
    raw = _config_dict(source, local)
    if raw.get("model_type") == "openvla":
        return _load_openvla(
            source,
            image_size=image_size,
            dtype=dtype,
            attn_implementation=attn_implementation,
            device=device,
            local=local,
        )
    if raw.get("model_type") == "prismatic":
        raise ModelError(
            f"model '{source}' is a Prismatic VLM without OpenVLA's action tokens (model_type "
            f"'prismatic'); use an OpenVLA checkpoint such as openvla/openvla-7b"
        )
    hub = {"trust_remote_code": True, "local_files_only": local}
    try:
        config = AutoConfig.from_pretrained(source, **hub)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model '{source}': {exc}") from None
    family = _family(config)
    expected = _expected_size(config, family)
    if expected is not None and tuple(expected) != tuple(image_size):
        raise ModelError(
            f"model '{source}' takes {expected[0]}x{expected[1]} images; pass --image-size {expected[0]}x{expected[1]}"
        )
    kwargs = {**hub, "dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    cls = _model_class(config, source, local)
    model = cls.from_pretrained(source, **kwargs).to(device)
    tokenizer = AutoTokenizer.from_pretrained(source, **hub)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    image_token_id = None
    if family != "openvla":
        image_token_id = getattr(config, "image_token_index", None)
        if image_token_id is None:
            image_token_id = getattr(config, "image_token_id")
    params = inspect.signature(type(model).forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    return VLA(
        model=model,
        tokenizer=tokenizer,
        family=family,
        source=str(source),
        image_size=tuple(image_size),
        image_token_id=image_token_id,
        num_image_tokens=_num_image_tokens(config, family),
        pixel_stats=_pixel_stats(source, local),
        cache_kw=cache_kw,
        dtype=dtype,
    )


# The processor and tokenizer files of a published OpenVLA checkpoint (copied as they are)
OPENVLA_PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def save_processor(vla: VLA, dest) -> None:
    """Tokenizer + image processor, so a checkpoint is self-contained. An OpenVLA model's files
    are copied unchanged from where it was loaded (the training never changes them)."""
    from transformers import AutoImageProcessor

    dest = Path(dest)
    if vla.family == "openvla":
        local = Path(vla.source).expanduser().is_dir()
        dest.mkdir(parents=True, exist_ok=True)
        for name in OPENVLA_PROCESSOR_FILES:
            try:
                found = _model_file(vla.source, name, local)
            except ModelError:
                continue  # a file the model does not have (tokenizer.model, added_tokens.json)
            shutil.copyfile(found, dest / name)
        return
    vla.tokenizer.save_pretrained(dest)
    try:
        AutoImageProcessor.from_pretrained(vla.source, use_fast=False).save_pretrained(dest)
    except (OSError, ValueError):
        pass  # the model has no image processor of its own


# ---- inputs --------------------------------------------------------------------------------


def pixel_values(vla: VLA, images: dict[str, np.ndarray], cameras: list[str], device) -> torch.Tensor:
    """{camera: uint8 (B, H, W, 3)} at the model's size -> normalised (B * cameras, C, H, W) in the
    model's dtype, ordered sample by sample, cameras in the given order."""
    stacked = np.stack([images[c] for c in cameras], axis=1)  # (B, N, H, W, 3)
    stacked = stacked.reshape((-1,) + stacked.shape[2:])
    x = torch.from_numpy(np.ascontiguousarray(stacked)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    parts = []
    for mean, std in vla.pixel_stats:
        m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=device).view(1, 3, 1, 1)
        parts.append((x - m) / s)
    return torch.cat(parts, dim=1).to(vla.dtype)


def set_image_position(vla: VLA, position: str) -> None:
    """Where this model's prompts put the picture (prompt.IMAGE_POSITIONS); only Llava-family
    models and OpenVLA models with a picture marker (the tiny preset) take it anywhere but first."""
    if position not in IMAGE_POSITIONS:
        raise ModelError(f"image position '{position}' is unknown (known: {', '.join(IMAGE_POSITIONS)})")
    movable = vla.family == "llava" or (vla.family == "openvla" and vla.image_token_id is not None)
    if position != IMAGE_FIRST and not movable:
        raise ModelError(
            f"--image-position {position} needs a Llava-family model or an OpenVLA model with a "
            f"picture marker (the tiny preset) ('{vla.source}' is {vla.family}, whose picture goes "
            f"first); use --image-position {IMAGE_FIRST}"
        )
    vla.image_position = position


TEXT_CACHE_SIZE = 4096


def text_ids(vla: VLA, text: str) -> list[int]:
    """The tokenizer's ids of `text` without special tokens, remembered per model (a fresh list)."""
    ids = vla.text_cache.get(text)
    if ids is None:
        if len(vla.text_cache) >= TEXT_CACHE_SIZE:
            vla.text_cache.clear()
        ids = vla.text_cache[text] = tuple(vla.tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(ids)


def prompt_ids(
    vla: VLA, instruction: str, state_ids=None, *, bare: bool = False, goal_first: bool = False
) -> list[int]:
    """Token ids of everything before the action tokens; `state_ids` (8 token ids of the
    discretised joint state) go into the prompt when given; the image placeholders go where
    `vla.image_position` says (Llava family, or an OpenVLA model's marker). `bare`: the
    instruction is the whole text, without the OpenVLA template (nor its closing '▁'),
    picture first (a pretraining lead-in only). `goal_first`:
    everything before the goal tokens, which come before the state (`state_ids` unused; they
    go into `middle_ids`)."""
    tok = vla.tokenizer
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    if vla.image_position != IMAGE_FIRST and not bare:
        question, rest = split_at_question(instruction, state_ids is not None, goal_first)
        ids = bos + text_ids(vla, question)
        ids += [vla.image_token_id] * (vla.num_image_tokens * vla.num_cameras)
        ids += text_ids(vla, rest)
        if state_ids is not None and not goal_first:
            ids += [int(t) for t in state_ids] + text_ids(vla, STATE_TEMPLATE[1])
        return ids
    if bare:
        text = text_ids(vla, instruction)
    elif goal_first:
        text = text_ids(vla, goal_first_prompt(instruction))
    elif state_ids is None:
        text = text_ids(vla, openvla_prompt(instruction))
    else:
        head, tail = state_prompt_parts(instruction)
        text = text_ids(vla, head) + [int(t) for t in state_ids] + text_ids(vla, tail)
    if vla.family == "openvla":
        space = tok.convert_tokens_to_ids("\u2581")  # OpenVLA expects the prompt to end with '▁'
        ids = bos + text
        if not bare and isinstance(space, int) and space != tok.unk_token_id and ids[-1] != space:
            ids.append(space)
        return ids
    images = [vla.image_token_id] * (vla.num_image_tokens * vla.num_cameras)
    if vla.family == "paligemma":
        newline = text_ids(vla, "\n")
        return images + bos + text + newline
    return bos + images + text


def middle_ids(vla: VLA, state_ids) -> list[int]:
    """With the goal before the state: the tokens between the goal and the actions,
    '\nState:' <8 state tokens> '\nOut:'."""
    _, state_text, out_text = GOAL_FIRST_TEMPLATE
    return text_ids(vla, state_text) + [int(t) for t in state_ids] + text_ids(vla, out_text)


def build_batch(
    vla: VLA,
    instructions: list[str],
    action_ids: np.ndarray | None,
    device,
    state_ids: np.ndarray | None = None,
    *,
    bare: bool = False,
    goal_first: int = 0,
    stop=False,
) -> dict:
    """Right-padded input_ids / attention_mask, and labels on the written tokens (goal and actions) only.
    `state_ids` (B, 8): state tokens for the prompt (None: the prompt has no state);
    `bare`: see prompt_ids. `goal_first` (with `state_ids`): the first this many tokens of
    every row of `action_ids` (the goal) come before the state: prompt, goal, `middle_ids`,
    actions, with labels on the goal and the actions. Without `action_ids` the batch holds
    the prompts up to the goal, and `middle_ids` (B, M) to feed once the goal is written.
    `stop` (one bool, or one per row): the row ends with the tokenizer's end-of-sequence token
    after its written tokens, labelled too (OpenVLA trains the `</s>` after the actions)."""
    goal_first = goal_first if state_ids is not None else 0
    stops = [bool(stop)] * len(instructions) if isinstance(stop, (bool, int)) else [bool(s) for s in stop]
    eos = vla.tokenizer.eos_token_id
    rows, labelled = [], []
    for i, instr in enumerate(instructions):
        state = None if state_ids is None else state_ids[i]
        ids = prompt_ids(vla, instr, state, bare=bare, goal_first=bool(goal_first))
        mask_row = [False] * len(ids)
        if action_ids is not None:
            targets = [int(t) for t in action_ids[i]]
            ids, mask_row = ids + targets[:goal_first], mask_row + [True] * len(targets[:goal_first])
            rest = targets[goal_first:] if goal_first else targets
            if goal_first and rest:  # a goal-only row (a picture without a demonstration) stops at the goal
                middle = middle_ids(vla, state)
                ids, mask_row = ids + middle, mask_row + [False] * len(middle)
            ids, mask_row = ids + rest, mask_row + [True] * len(rest)
            if stops[i] and eos is not None:
                ids, mask_row = ids + [int(eos)], mask_row + [True]
        rows.append(ids)
        labelled.append(mask_row)
    width = max(len(r) for r in rows)
    pad = vla.tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        keep = torch.tensor(labelled[i], dtype=torch.bool)
        labels[i, : len(r)][keep] = input_ids[i, : len(r)][keep]
    batch = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
    if goal_first and action_ids is None:
        batch["middle_ids"] = torch.tensor([middle_ids(vla, s) for s in state_ids], dtype=torch.long).to(device)
    if vla.family == "paligemma":  # the suffix: from the first labelled token on (a middle part included)
        batch["token_type_ids"] = ((labels != IGNORE).long().cummax(1).values * mask).to(device)
    return batch


# ---- the parallel action head (--action-head parallel-l1) ---------------------------------

ACTION_HEAD_FILE = "action_head.safetensors"


class ParallelActionHead(torch.nn.Module):
    """The learned part of parallel decoding: one query embedding per action value of a chunk
    (horizon * action_dim positions placed after the prompt, zero at the start, so they begin
    as empty positions told apart by their place in the sequence), and a residual MLP that maps
    the language model's last hidden states of a chunk step's `action_dim` positions to that
    step's `action_dim` normalised values."""

    def __init__(self, hidden_size: int, horizon: int, action_dim: int = 8, width: int | None = None,
                 blocks: int = 2):
        super().__init__()
        self.hidden_size, self.horizon, self.action_dim = int(hidden_size), int(horizon), int(action_dim)
        self.width = int(width or min(1024, 2 * hidden_size))
        self.blocks_n = int(blocks)
        self.queries = torch.nn.Parameter(torch.zeros(self.horizon * self.action_dim, self.hidden_size))
        self.norm_in = torch.nn.LayerNorm(self.action_dim * self.hidden_size)
        self.proj_in = torch.nn.Linear(self.action_dim * self.hidden_size, self.width)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.LayerNorm(self.width),
                torch.nn.Linear(self.width, self.width),
                torch.nn.GELU(),
                torch.nn.Linear(self.width, self.width),
            )
            for _ in range(self.blocks_n)
        )
        self.norm_out = torch.nn.LayerNorm(self.width)
        self.proj_out = torch.nn.Linear(self.width, self.action_dim)

    @property
    def n_positions(self) -> int:
        return self.horizon * self.action_dim

    def settings(self) -> dict:
        """What rebuilds this head (policy_config.json's openvla.parallel_head)."""
        return {"hidden_size": self.hidden_size, "horizon": self.horizon, "action_dim": self.action_dim,
                "width": self.width, "blocks": self.blocks_n}

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, horizon * action_dim, hidden_size) -> (B, horizon, action_dim) normalised values."""
        b = hidden.shape[0]
        x = hidden.float().reshape(b, self.horizon, self.action_dim * self.hidden_size)
        x = self.proj_in(self.norm_in(x))
        for block in self.blocks:
            x = x + block(x)
        return self.proj_out(self.norm_out(x))


def _core(model) -> torch.nn.Module:
    """The OpenVLA model inside PEFT and DDP wrappers (its LoRA layers stay in place)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


class ParallelDecoder(torch.nn.Module):
    """An OpenVLA model and its ParallelActionHead as one module (what the trainer optimises,
    and DDP wraps, and the policy runs): one forward pass from prompt and picture to a chunk.

    The sequence is the prompt (the picture's patches inserted as OpenVLA inserts them) followed
    by the action query positions; prompt positions attend causally, the action positions attend
    to the whole prompt and to each other in both directions. The language model's head
    (the vocabulary logits) is not run."""

    def __init__(self, model: torch.nn.Module, head: ParallelActionHead):
        super().__init__()
        core = _core(model)
        if not all(hasattr(core, n) for n in ("vision_backbone", "projector", "language_model", "image_offsets")):
            raise ModelError(
                f"--action-head {PARALLEL_L1} needs a model in OpenVLA's architecture (openvla/openvla-7b or the "
                f"tiny preset); this one is {type(core).__name__}"
            )
        hidden = core.config.text_config.hidden_size
        if hidden != head.hidden_size:
            raise ModelError(f"the parallel action head reads {head.hidden_size}-wide hidden states, the model "
                             f"has {hidden}")
        self.model, self.head = model, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, action_mask: torch.Tensor,
                pixel_values: torch.Tensor) -> torch.Tensor:
        """Prompts with `head.n_positions` placeholder ids where `action_mask` is True (right after
        each row's prompt, rows right-padded) -> (B, horizon, action_dim) normalised actions."""
        core = _core(self.model)
        b, n = input_ids.shape[0], self.head.n_positions
        if bool((action_mask.sum(1) != n).any()):
            raise ValueError(f"every row needs {n} action positions (found {action_mask.sum(1).tolist()})")
        embeds = core.get_input_embeddings()(input_ids)
        queries = self.head.queries.to(embeds.dtype)[None].expand(b, n, -1)
        embeds = embeds.masked_scatter(action_mask[..., None], queries)
        patches = core.projector(core.vision_backbone(pixel_values.to(core.projector.fc1.weight.dtype)))
        after = core.image_offsets(input_ids)
        embeds = core._insert(embeds, patches.to(embeds.dtype), after)
        zeros = torch.zeros(patches.shape[:2], dtype=torch.long, device=input_ids.device)
        valid = core._insert(attention_mask.long(), torch.ones_like(zeros), after).bool()
        is_action = core._insert(action_mask.long(), zeros, after).bool()
        length = embeds.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=embeds.device).tril()
        allowed = (causal[None] | (is_action[:, :, None] & is_action[:, None, :])) & valid[:, None, :]
        mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=embeds.device)
        mask = mask.masked_fill(~allowed, torch.finfo(embeds.dtype).min)[:, None]
        out = core.language_model.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        hidden = out.last_hidden_state[is_action].view(b, n, -1)
        return self.head(hidden)


def save_action_head(head: ParallelActionHead, directory) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()},
              str(Path(directory) / ACTION_HEAD_FILE))


def load_action_head(directory, settings: dict, device) -> ParallelActionHead:
    """The head saved in `directory` (ACTION_HEAD_FILE) built with `settings` (ParallelActionHead.settings);
    CheckpointError naming the file or field when it is missing or does not fit."""
    from safetensors.torch import load_file

    from crane_x7_vla.checkpoint_contract import CheckpointError

    path = Path(directory) / ACTION_HEAD_FILE
    try:
        head = ParallelActionHead(**settings)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"openvla.parallel_head {settings!r} does not describe a parallel action head "
                              f"({_first_line(exc)})") from None
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; this checkpoint decodes with --action-head {PARALLEL_L1}, whose "
                              f"head is kept there; copy the whole checkpoint directory again")
    try:
        head.load_state_dict(load_file(str(path)))
    except Exception as exc:  # noqa: BLE001 - safetensors and torch each raise their own kinds
        raise CheckpointError(f"{path}: the parallel action head cannot be loaded ({_first_line(exc)})") from None
    return head.to(device)


def build_action_head(kind: str, vla: VLA, horizon: int, resume_dir=None, resume_config: dict | None = None):
    """The trained action head of a run: None for the token head; for parallel-l1 a fresh
    ParallelActionHead on the model's device, or the one of the checkpoint it resumes from."""
    found = ((resume_config or {}).get("openvla") or {}).get("action_head", TOKEN_HEAD)
    if resume_config is not None and found != kind:
        raise ConfigError(f"--resume-from-checkpoint: trained with --action-head {found}; resume with the same "
                          f"(got --action-head {kind})")
    if kind == TOKEN_HEAD:
        return None
    hidden = _core(vla.model).config.text_config.hidden_size
    if resume_dir is not None:
        settings = ((resume_config or {}).get("openvla") or {}).get("parallel_head") or {}
        return load_action_head(resume_dir, settings, vla.device)
    return ParallelActionHead(hidden, horizon).to(vla.device)
