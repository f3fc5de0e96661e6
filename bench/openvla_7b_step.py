"""OpenVLA-7B-sized model, random weights: LoRA train step time and peak GPU memory, and
actions per second at inference.

    python bench/openvla_7b_step.py                     # GPU machine: full size, bf16, batch 16,
                                                        #   with and without gradient checkpointing,
                                                        #   then inference (batch 1)
    python bench/openvla_7b_step.py --mode train --gradient-checkpointing off
    python bench/openvla_7b_step.py --device cpu --depth-override 1 --width-divisor 64 --batch-size 2 --steps 1
                                                        # the same code end to end on a CPU (functional check)

The model is the backend's own OpenVLA class (prismatic.OpenVLAForActionPrediction, the
architecture and parameter names of the published `openvla/openvla-7b`) built from a config,
never downloaded: DINOv2 ViT-L/14 (hidden 1024, 24 layers, 16 heads, 4 registers) and SigLIP
So400M/14 (hidden 1152, 27 layers, 16 heads) fused channel-wise at 224x224 (256 patches),
the 3-layer MLP projector and Llama-2-7B (hidden 4096, 32 layers, 32 heads, MLP 11008,
32064 embedding rows): 7.54B parameters, as OpenVLA-7B. Weights are created directly on
the target device; the parameter count is taken from a build on the meta device first, and
a full-size build on a CPU is refused (it would need ~30 GB in fp32).

Everything after "build the weights" is the backend's own code: the training side calls the
trainer's `build_model` (LoRA rank 32 on all linear layers through PEFT, gradient
checkpointing, dtype) and then runs the trainer's step (decode.forward -> decode.action_loss
-> backward -> clip -> AdamW -> scheduler); the inference side is `OpenVLAPolicy.predict`
(centre crop, prompt, greedy decoding of 8 action tokens restricted to the action ids,
de-tokenisation, clamping). To do that without a checkpoint on disk, the name the backend
loads (`load_vla`) is pointed, for the duration of the build only, at the random-weight
builder below; it accepts only this script's own model name.

The prompt tokenizer is a Llama-style tokenizer of 32000 pieces written by the backend's
layout module (as the tiny preset's, filled up to Llama-2's size; its last 256 ids are the
action tokens), so the embedding, LM head and loss cost the same as OpenVLA-7B's; only the
pieces differ.

Figures: `train.<off|on>.step_time_s` (median of --steps timed steps after one warm-up),
`train.<off|on>.peak_gpu_bytes` (torch.cuda.max_memory_allocated over build + steps; None on
a CPU, where PyTorch keeps no such counter: `peak_host_rss_bytes` is the process's peak
resident memory instead), `inference.actions_per_s` (policy.predict calls per second, batch 1,
one 640x480 camera frame each). --json PATH also writes them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

MODEL_NAME = "random-openvla-7b-size"  # the only name the swapped-in loader accepts
VOCAB_ROWS = 32064  # OpenVLA-7B's Llama-2 vocabulary (32000) padded to a multiple of 64
ANCHOR_TRAIN_BYTES = 72e9
ANCHORS = {
    "train_peak_memory_no_checkpointing": "~72 GB at batch 16 without gradient checkpointing "
    "(OpenVLA authors, LoRA fine-tuning of OpenVLA-7B)",
    "inference_actions_per_s": "~6 actions/s on an RTX 4090 (OpenVLA authors, bf16)",
}
CPU_PARAM_LIMIT = 1_000_000_000  # above this a CPU build needs --allow-large-cpu


@dataclass(frozen=True)
class Arch:
    text_hidden: int = 4096
    text_layers: int = 32
    text_heads: int = 32
    text_ffn: int = 11008
    vision_hidden: int = 1024  # the DINOv2 tower
    vision_layers: int = 24
    vision_heads: int = 16
    siglip_hidden: int = 1152  # the SigLIP tower
    siglip_layers: int = 27
    siglip_heads: int = 16
    image: int = 224
    patch: int = 14
    vocab_rows: int = VOCAB_ROWS

    @property
    def full_size(self) -> bool:
        return self == Arch()


def _shrink(hidden: int, heads: int, ffn: int, k: int) -> tuple[int, int, int]:
    """Hidden and MLP sizes divided by k; heads halved until each has >= 8 (even) dims."""
    hidden = max(16, (hidden // k) // 16 * 16)
    ffn = max(16, ffn // k)
    while heads > 1 and (hidden % heads or hidden // heads < 8 or (hidden // heads) % 2):
        heads //= 2
    return hidden, heads, ffn


def make_arch(depth_override: int = 0, width_divisor: int = 1) -> Arch:
    if depth_override < 0:
        raise SystemExit(f"--depth-override must be >= 0 (got {depth_override})")
    if width_divisor < 1:
        raise SystemExit(f"--width-divisor must be >= 1 (got {width_divisor})")
    a = Arch()
    if depth_override:
        # a tower runs all its blocks but the last: at least 2, so that one runs
        tower = max(2, depth_override)
        a = replace(a, text_layers=depth_override, vision_layers=tower, siglip_layers=tower)
    if width_divisor > 1:
        th, tn, tf = _shrink(a.text_hidden, a.text_heads, a.text_ffn, width_divisor)
        vh, vn, _ = _shrink(a.vision_hidden, a.vision_heads, 0, width_divisor)
        sh, sn, _ = _shrink(a.siglip_hidden, a.siglip_heads, 0, width_divisor)
        a = replace(
            a,
            text_hidden=th,
            text_heads=tn,
            text_ffn=tf,
            vision_hidden=vh,
            vision_heads=vn,
            siglip_hidden=sh,
            siglip_heads=sn,
        )
    return a


# ---- the model -----------------------------------------------------------------------------

_TOKENIZERS: dict = {}
_CORPUS = "In: What action should the robot take to pick up the red cube and place it in the box?\nOut:\n"


def _tokenizer():
    """Llama-2-sized (32000 pieces, `<PAD>` added as 32000), written once per process."""
    if "tok" not in _TOKENIZERS:
        from transformers import AutoTokenizer

        from crane_x7_vla.backends.openvla.layout import write_tokenizer

        with tempfile.TemporaryDirectory() as d:
            write_tokenizer(d, _CORPUS, VOCAB_ROWS - 64, text_vocab=768)
            _TOKENIZERS["tok"] = AutoTokenizer.from_pretrained(d)
    return _TOKENIZERS["tok"]


def openvla_config(arch: Arch):
    """The published OpenVLA-7B configuration; a reduced `arch` is recorded as tower overrides."""
    from crane_x7_vla.backends.openvla.prismatic import OpenVLAConfig

    overrides = None
    if not arch.full_size:
        overrides = [
            dict(embed_dim=arch.vision_hidden, depth=arch.vision_layers, num_heads=arch.vision_heads),
            dict(embed_dim=arch.siglip_hidden, depth=arch.siglip_layers, num_heads=arch.siglip_heads),
        ]
    pad = VOCAB_ROWS - 64
    text = dict(
        hidden_size=arch.text_hidden,
        intermediate_size=arch.text_ffn,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        num_key_value_heads=arch.text_heads,
        vocab_size=arch.vocab_rows,
        max_position_embeddings=4096,
        pad_token_id=pad,
        bos_token_id=1,
        eos_token_id=2,
    )
    return OpenVLAConfig(
        vision_backbone_id="dinosiglip-vit-so-224px",
        image_sizes=[arch.image, arch.image],
        text_config=text,
        pad_token_id=pad,
        pad_to_multiple_of=arch.vocab_rows - pad,
        vision_tower_overrides=overrides,
    )


def count_params(arch: Arch) -> int:
    """Parameter count from a build on the meta device (no memory is allocated)."""
    import torch

    from crane_x7_vla.backends.openvla.prismatic import OpenVLAForActionPrediction

    with torch.device("meta"):
        model = OpenVLAForActionPrediction(openvla_config(arch))
    return sum(p.numel() for p in model.parameters())


def random_weights_loader(arch: Arch):
    """A function with `load_vla`'s signature that builds `arch` with random weights on `device`."""

    def load(source, *, image_size, dtype=None, attn_implementation=None, device="cpu"):
        import torch

        from crane_x7_vla.backends.openvla.layout import TVF_STATS
        from crane_x7_vla.backends.openvla.model import VLA, ModelError
        from crane_x7_vla.backends.openvla.prismatic import OpenVLAForActionPrediction

        if source != MODEL_NAME and Path(source).name != "model":
            raise ModelError(
                f"the benchmark's loader builds '{MODEL_NAME}' or a checkpoint's model/ only (asked for '{source}')"
            )
        if tuple(image_size) != (arch.image, arch.image):
            raise ModelError(f"the benchmark model takes {arch.image}x{arch.image} images (asked {image_size})")
        dtype = dtype or torch.float32
        tokenizer = _tokenizer()
        config = openvla_config(arch)
        kwargs = {"dtype": dtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        torch.manual_seed(0)
        with torch.device(device):  # weights are created where they will live
            model = OpenVLAForActionPrediction._from_config(config, **kwargs)
        tensors = [*model.parameters(), *model.buffers()]
        wrong = {str(t.device) for t in tensors if t.device.type != torch.device(device).type}
        if wrong:
            raise RuntimeError(f"parameters were created on {wrong}, not on {device}")
        if tokenizer.vocab_size != config.action_vocab_size:
            raise RuntimeError(f"the tokenizer has {tokenizer.vocab_size} pieces, the model {config.action_vocab_size}")
        return VLA(
            model=model,
            tokenizer=tokenizer,
            family="openvla",
            source=MODEL_NAME,
            image_size=tuple(image_size),
            image_token_id=None,
            num_image_tokens=0,
            pixel_stats=[(list(m), list(s)) for m, s in TVF_STATS],
            cache_kw="cache",
            dtype=dtype,
        )

    return load


@contextlib.contextmanager
def backend_loads_random(module, arch: Arch):
    """While active, `module.load_vla` (the name the backend module calls) builds random weights."""
    original = module.load_vla
    module.load_vla = random_weights_loader(arch)
    try:
        yield
    finally:
        module.load_vla = original


def statistics_from_limits() -> dict:
    """Dataset statistics spanning the joint limits (the action tokenizer's normalisation)."""
    from crane_x7_vla import robot

    lo, hi = np.asarray(robot.LOWER_LIMITS, float), np.asarray(robot.UPPER_LIMITS, float)
    entry = {
        "q01": lo.tolist(),
        "q99": hi.tolist(),
        "min": lo.tolist(),
        "max": hi.tolist(),
        "mean": ((lo + hi) / 2).tolist(),
        "std": ((hi - lo) / 4).tolist(),
    }
    return {"action": entry, "proprio": entry}


# ---- measurements --------------------------------------------------------------------------


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device):
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _gpu_peak(device) -> dict:
    import torch

    if device.type != "cuda":
        return {"peak_gpu_bytes": None, "peak_gpu_reserved_bytes": None}
    return {
        "peak_gpu_bytes": int(torch.cuda.max_memory_allocated(device)),
        "peak_gpu_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
    }


def train_bench(args, arch: Arch, device, checkpointing: bool, out_dir: str) -> dict:
    from crane_x7_vla.backends.openvla.config import OpenVLAConfig

    cfg = OpenVLAConfig(
        backend="openvla",
        model=MODEL_NAME,
        image_size=f"{arch.image}x{arch.image}",
        batch_size=args.batch_size,
        max_steps=args.steps + 1,
        gradient_checkpointing=checkpointing,
        lora_rank=args.lora_rank,
        lora_alpha=2 * args.lora_rank,
        precision=args.precision,
        attn_implementation=args.attn_implementation,
        device=str(device),
        output_dir=out_dir,
        num_workers=0,
    ).resolved()
    result = {"gradient_checkpointing": checkpointing, "status": "ok"}
    _guarded(device, result, lambda: _train_measure(args, arch, device, cfg, result))
    return result


def _guarded(device, result: dict, measure) -> None:
    """Run `measure` (which fills `result`); record running out of GPU memory as the outcome, and
    give every byte back before the next measurement (all of `measure`'s locals are gone here)."""
    import torch

    if device.type == "cuda":
        _free(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        measure()
    except torch.cuda.OutOfMemoryError as exc:
        result.update(status="out_of_memory", error=str(exc).splitlines()[0])
    result.update(_gpu_peak(device))
    _free(device)


def _train_measure(args, arch: Arch, device, cfg, result: dict) -> None:
    import torch

    from crane_x7_vla import robot
    from crane_x7_vla.backends.openvla import decode, trainer
    from crane_x7_vla.backends.openvla.action_tokenizer import ActionTokenizer
    from crane_x7_vla.backends.openvla.model import build_batch, pixel_values
    from crane_x7_vla.preprocess import Normalizer

    t0 = time.perf_counter()
    with backend_loads_random(trainer, arch):
        vla = trainer.build_model(cfg, MODEL_NAME, device, None)
    _sync(device)
    result["build_s"] = time.perf_counter() - t0
    model = vla.model
    model.train()
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    flag = (
        "is_activation_checkpointing"
        if hasattr(type(inner), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    result["checkpointing_active"] = bool(getattr(inner, flag))
    result["dtype"] = str(vla.dtype).replace("torch.", "")
    if device.type == "cuda":
        result["weights_gpu_bytes"] = int(torch.cuda.memory_allocated(device))
    trainable = [p for p in model.parameters() if p.requires_grad]
    result["params_total"] = int(sum(p.numel() for p in model.parameters()))
    result["params_trained"] = int(sum(p.numel() for p in trainable))
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = trainer.make_scheduler(optimizer, cfg, cfg.max_steps)

    # one fixed batch, made outside the timed region (the data pipeline has its own benchmark)
    rng = np.random.default_rng(0)
    atok = ActionTokenizer(vla.vocab_size, Normalizer.from_stats(statistics_from_limits(), "action"))
    lo, hi = np.asarray(robot.LOWER_LIMITS), np.asarray(robot.UPPER_LIMITS)
    actions = rng.uniform(lo, hi, size=(args.batch_size, len(lo)))
    images = {"primary": rng.integers(0, 256, (args.batch_size, arch.image, arch.image, 3), dtype=np.uint8)}
    pix = pixel_values(vla, images, ["primary"], device)
    inputs = build_batch(vla, [args.instruction] * args.batch_size, atok.encode(actions), device)
    # the prompt and action tokens, and the picture's patches the model inserts after <s>
    result["sequence_tokens"] = int(inputs["input_ids"].shape[1]) + (arch.image // arch.patch) ** 2

    losses = []

    def step():
        out = decode.forward(model, vla, inputs, pix)
        loss, _, _, _ = decode.action_loss(out.logits, inputs, atok.first_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))  # waits for the device

    t0 = time.perf_counter()
    step()
    _sync(device)
    result["first_step_s"] = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    result.update(
        step_time_s=statistics.median(times),
        step_times_s=times,
        samples_per_s=args.batch_size / statistics.median(times),
        losses=losses,
    )
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"the training loss is not finite: {losses}")


def infer_bench(args, arch: Arch, device) -> dict:
    from crane_x7_vla import robot

    config = {
        "image_spec": {"width": arch.image, "height": arch.image, "crop_scale": 0.9, "color_jitter": 0.0},
        "cameras": ["primary"],
        "action_space": {"horizon": 1},
        "dataset_statistics": statistics_from_limits(),
        "default_instruction": args.instruction,
        "base_model": MODEL_NAME,
        "joint_names": list(robot.JOINT_NAMES),
        "openvla": {"family": "openvla", "use_lora": True, "action_token_count": 8, "n_bins": 256, "weights": "model"},
    }
    result = {"status": "ok", "batch_size": 1, "action_tokens": robot.ACTION_DIM}
    _guarded(device, result, lambda: _infer_measure(args, arch, device, config, result))
    return result


def _infer_measure(args, arch: Arch, device, config: dict, result: dict) -> None:
    from crane_x7_vla import robot
    from crane_x7_vla.backends.openvla import policy as openvla_policy

    with tempfile.TemporaryDirectory() as ckpt, backend_loads_random(openvla_policy, arch):
        # A checkpoint of full weights (model/), which load_vla (patched above) builds at random.
        (Path(ckpt) / "model").mkdir()
        t0 = time.perf_counter()
        pol = openvla_policy.OpenVLAPolicy(ckpt, config, device=str(device))
        _sync(device)
        result["build_s"] = time.perf_counter() - t0
    result["dtype"] = str(pol.vla.dtype).replace("torch.", "")
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)  # a camera frame, cropped by the policy
    obs = {"images": {"primary": frame}, "instruction": args.instruction}
    t0 = time.perf_counter()
    for _ in range(2):
        first = pol.predict(obs)
    result["warmup_s"] = time.perf_counter() - t0
    times = []
    for _ in range(args.infer_actions):
        t0 = time.perf_counter()
        action = pol.predict(obs)
        times.append(time.perf_counter() - t0)
    if action.shape != (1, robot.ACTION_DIM) or not np.all(robot.within_limits(action[0])):
        raise RuntimeError(f"the policy returned {action} (shape {action.shape}), not one action within limits")
    result.update(
        action_time_s=statistics.median(times),
        action_times_s=times,
        actions_per_s=1.0 / statistics.median(times),
        last_action=action[0].tolist(),
        deterministic=bool(np.array_equal(first, action)),
    )


# ---- report ----------------------------------------------------------------------------------


def _gb(b):
    return "n/a (CPU)" if b is None else f"{b / 1e9:.1f} GB"


def print_report(r: dict) -> None:
    a = r["architecture"]
    print(
        f"OpenVLA-7B-sized model (OpenVLA's architecture), random weights: text {a['text_layers']}x"
        f"{a['text_hidden']} (MLP {a['text_ffn']}, {a['text_heads']} heads), DINOv2 {a['vision_layers']}x"
        f"{a['vision_hidden']} ({a['vision_heads']} heads) + SigLIP {a['siglip_layers']}x{a['siglip_hidden']} "
        f"({a['siglip_heads']} heads), {r['params_total'] / 1e9:.3f}B params, on {r['device_name']}"
    )
    rows = []
    for mode, t in r.get("train", {}).items():
        label = f"train LoRA r{r['lora_rank']}, batch {r['batch_size']}, checkpointing {mode}"
        if t["status"] != "ok":
            rows.append(
                (
                    label,
                    t["status"],
                    _gb(t["peak_gpu_bytes"]),
                    ANCHORS["train_peak_memory_no_checkpointing"] if mode == "off" else "",
                )
            )
            continue
        rows.append(
            (
                label,
                f"{t['step_time_s']:.3f} s/step ({t['samples_per_s']:.1f} samples/s)",
                _gb(t["peak_gpu_bytes"]),
                ANCHORS["train_peak_memory_no_checkpointing"] if mode == "off" else "",
            )
        )
    if "inference" in r:
        i = r["inference"]
        value = (
            i["status"]
            if i["status"] != "ok"
            else f"{i['actions_per_s']:.2f} actions/s ({i['action_time_s'] * 1e3:.0f} ms)"
        )
        rows.append(
            (
                "inference, batch 1, 8 action tokens greedy",
                value,
                _gb(i["peak_gpu_bytes"]),
                ANCHORS["inference_actions_per_s"],
            )
        )
    widths = [
        max(len(str(row[c])) for row in rows + [("measurement", "figure", "peak GPU memory", "anchor")])
        for c in range(4)
    ]
    for row in [("measurement", "figure", "peak GPU memory", "anchor")] + rows:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    for mode, t in r.get("train", {}).items():
        if t["status"] == "ok":
            print(
                f"  (checkpointing {mode}: {t['sequence_tokens']} tokens/sample, {t['params_trained'] / 1e6:.1f}M "
                f"trained params, {t['dtype']}, first step {t['first_step_s']:.2f} s)"
            )
    print(f"  peak host memory (RSS): {r['peak_host_rss_bytes'] / 1e9:.2f} GB")
    if r["functional_check_only"]:
        print("  NOTE: " + r["note"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("all", "train", "infer"), default="all")
    p.add_argument("--gradient-checkpointing", choices=("both", "on", "off"), default="both")
    p.add_argument("--batch-size", type=int, default=16, help="training batch (inference is batch 1)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps after one warm-up step")
    p.add_argument("--infer-actions", type=int, default=20, help="timed predictions after two warm-up ones")
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument(
        "--depth-override",
        type=int,
        default=0,
        help="layers in the text model and both vision towers (at least 2 there, as a tower "
        "never runs its last one; 0: 32 / 24 / 27)",
    )
    p.add_argument("--width-divisor", type=int, default=1, help="divide hidden and MLP sizes by this (1: full)")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument(
        "--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on GPU, fp32 on CPU"
    )
    p.add_argument("--attn-implementation", default=None, help="e.g. sdpa, eager, flash_attention_2")
    p.add_argument("--instruction", default="pick up the red cube and place it in the box")
    p.add_argument("--allow-large-cpu", action="store_true", help="allow a build of more than 1B params on a CPU")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    for name in ("batch_size", "steps", "infer_actions", "lora_rank"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")

    import torch

    arch = make_arch(args.depth_override, args.width_divisor)
    auto = args.device == "auto"
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if auto else args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            p.error(f"--device {args.device}: no CUDA GPU is visible to PyTorch")
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.set_device(device)
    n_params = count_params(arch)
    if device.type == "cpu" and n_params > CPU_PARAM_LIMIT and not args.allow_large_cpu:
        message = (
            f"no GPU here: the {n_params / 1e9:.2f}B-parameter model is not built on a CPU "
            f"(~{n_params * 4 / 1e9:.0f} GB in fp32). For a functional check on a CPU pass e.g. "
            f"--depth-override 1 --width-divisor 64 --batch-size 2 --steps 1"
        )
        if auto:  # nothing to measure on this machine: say so and write it down, not a failure
            print(f"openvla_7b_step skipped: {message}")
            if args.json:
                Path(args.json).write_text(json.dumps({"skipped": message, "params_total": n_params}, indent=2))
            return 0
        print(f"error: {message} (or --allow-large-cpu)", file=sys.stderr)
        return 2

    on_cpu = device.type == "cpu"
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "architecture": asdict(arch),
        "full_size": arch.full_size,
        "params_total": n_params,
        "batch_size": args.batch_size,
        "lora_rank": args.lora_rank,
        "steps": args.steps,
        "depth_override": args.depth_override,
        "width_divisor": args.width_divisor,
        "precision": args.precision,
        "attn_implementation": args.attn_implementation,
        "functional_check_only": on_cpu or not arch.full_size,
        "note": ("CPU run" if on_cpu else "reduced-size model") + ": these figures check that the code runs "
        "end to end; they are not the full-size GPU figures the anchors refer to",
        "anchors": ANCHORS,
        "memory_fields": "peak_gpu_bytes = torch.cuda.max_memory_allocated over build + steps (None on a CPU); "
        "peak_host_rss_bytes = peak resident memory of this process",
    }
    if args.mode in ("all", "train"):
        modes = ["off", "on"] if args.gradient_checkpointing == "both" else [args.gradient_checkpointing]
        result["train"] = {}
        with tempfile.TemporaryDirectory() as out_dir:
            for mode in modes:
                result["train"][mode] = train_bench(args, arch, device, mode == "on", out_dir)
    if args.mode in ("all", "infer"):
        result["inference"] = infer_bench(args, arch, device)
    result["peak_host_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    # running out of GPU memory is a measured outcome (recorded above), not a failure of the script
    return 0


if __name__ == "__main__":
    sys.exit(main())
