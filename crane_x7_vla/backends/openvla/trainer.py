"""OpenVLA fine-tuning: `train(cfg) -> Path` (the checkpoint-final directory).

LoRA on all linear layers (PEFT) or full weights, AdamW with warmup and a decay schedule,
gradient accumulation, loss on the 8 action tokens only. Under torchrun (one node or several)
the processes share the work as `--strategy` says: DDP, or FSDP with sharded weights, gradients
and optimizer state (distributed.py). Checkpoints hold everything an exact resume needs.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from crane_x7_vla import checkpoint_contract as contract
from crane_x7_vla import robot
from crane_x7_vla.backends.openvla import decode
from crane_x7_vla.backends.openvla import distributed as dd
from crane_x7_vla.backends.openvla.distributed import Dist
from crane_x7_vla.backends.openvla.action_tokenizer import ActionCodec
from crane_x7_vla.backends.openvla.model import (
    BASE_DIRECTORY,
    BASE_HUB,
    BASE_IN_CHECKPOINT,
    VLA,
    ParallelDecoder,
    apply_adapter,
    build_action_head,
    checkpoint_model_source,
    is_preset,
    load_adapter_weights,
    load_vla,
    materialize_preset,
    save_action_head,
    save_processor,
    set_image_position,
)
from crane_x7_vla.backends.openvla.inputs import ModelInputs
from crane_x7_vla.backends.openvla.prompt import IMAGE_FIRST
from crane_x7_vla.preprocess import ABSOLUTE, delta_mask, model_action_statistics
from crane_x7_vla.training import checkpoint as ckpt
from crane_x7_vla.training.config import ConfigError, TrainConfig
from crane_x7_vla.training.data import BatchStream, DataPosition, eval_batches
from crane_x7_vla.training.goal_scenes import training_goal_scenes
from crane_x7_vla.training import metrics as mn
from crane_x7_vla.training import loop
from crane_x7_vla.training.preflight import preflight

BACKEND = "openvla"


# ---- set-up -------------------------------------------------------------------------------


def _dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def _cameras(cfg: TrainConfig, available: list[str], family: str) -> list[str]:
    if cfg.cameras:
        if len(cfg.cameras) > 1 and family != "llava":
            raise ConfigError(f"a {family} model takes one camera image; pass one name to --cameras")
        return list(cfg.cameras)
    if family == "llava" and len(available) > 1:
        return list(available)
    return ["primary"] if "primary" in available else [available[0]]


def _base_source(cfg: TrainConfig, pre, dist_: Dist) -> tuple[str, Path | None]:
    """Where the base model is loaded from, and the preset directory to copy into checkpoints."""
    if pre.resume_dir is not None and not cfg.use_lora:
        return str(pre.resume_dir / "model"), (pre.resume_dir / "base" if (pre.resume_dir / "base").exists() else None)
    if pre.resume_dir is not None and (pre.resume_dir / "base").exists():
        return str(pre.resume_dir / "base"), pre.resume_dir / "base"
    if is_preset(cfg.model):
        dest = Path(cfg.output_dir) / "base_model"
        if dist_.main:
            materialize_preset(cfg.model, dest, image_size=(cfg.image_spec.width, cfg.image_spec.height), seed=cfg.seed)
        dist_.barrier()
        return str(dest), dest
    return cfg.model, None


def lora_config(cfg: TrainConfig, exclude: list[str] | None = None):
    """LoRA on every linear layer, except inside the modules named in `exclude`."""
    from peft import LoraConfig

    skip = rf"({'|'.join(re.escape(n) for n in exclude)})(\..*)?" if exclude else None
    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        init_lora_weights="gaussian",
        exclude_modules=skip,
    )


def build_model(
    cfg: TrainConfig, source: str, device: torch.device, resume_dir: Path | None, dtype: torch.dtype | None = None
):
    """Load the base model and make it trainable as configured (LoRA or full weights); `dtype`:
    the weights' dtype, not set: the run's precision."""
    vla = load_vla(
        source,
        image_size=(cfg.image_spec.width, cfg.image_spec.height),
        dtype=dtype or _dtype(cfg, device),
        attn_implementation=cfg.attn_implementation,
        device=device,
    )
    vla.model = make_trainable(vla.model, cfg, resume_dir)
    return vla


def make_trainable(model, cfg: TrainConfig, resume_dir: Path | None = None):
    """The loaded model made trainable as configured: LoRA adapters (PEFT) or all weights, the
    frozen parts frozen; returns the model to train."""
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # an OpenVLA model stores layers its forward pass never runs (each tower's last block and final
    # norm, SigLIP's pooling head): they get no adapters and are not trained, so no trained
    # parameter goes without a gradient
    unused = model.unused_modules() if hasattr(model, "unused_modules") else []
    if cfg.use_lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg, unused))
        if resume_dir is not None:
            load_adapter_weights(model, resume_dir / "adapter" / "adapter_model.safetensors")
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        for name in unused:
            model.get_submodule(name).requires_grad_(False)
    if cfg.freeze_vision:
        vision_module(model).requires_grad_(False)
    return model


def vision_module(model) -> torch.nn.Module:
    """The image encoder of a Llava/PaliGemma (vision_tower) or OpenVLA (vision_backbone) model,
    wrapped by PEFT or not."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("vision_tower", "vision_backbone"):
            return module
    raise ConfigError("--freeze-vision: this model has no vision_tower or vision_backbone to freeze")


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    warmup = int(round(cfg.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.lr_scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if cfg.lr_scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---- evaluation -----------------------------------------------------------------------------


def _greedy_ids(builder: ModelInputs, model, batch: dict, pix, n_tokens: int):
    """Greedy decoding as at deployment, grouped by prompt length (no padding): yields (rows, ids)."""
    vla, codec = builder.vla, builder.codec
    prompts = builder.prompts(batch["instruction"], batch["state"])
    lengths = prompts["attention_mask"].sum(1)
    for length in lengths.unique().tolist():
        rows = (lengths == length).nonzero().flatten()
        sub = {k: v[rows] if k == "middle_ids" else v[rows][:, :length] for k, v in prompts.items()}
        sub_pix = pix.view(len(lengths), -1, *pix.shape[1:])[rows].flatten(0, 1)
        ids = decode.generate_action_ids(
            model, vla, sub, sub_pix, n_tokens, codec.first_id, middle_after=codec.goal_first
        )
        yield rows.cpu().numpy(), ids.cpu().numpy()


@torch.no_grad()
def evaluate(vla: VLA, model, episodes, cameras, cfg: TrainConfig, codec: ActionCodec, device) -> dict:
    """Teacher-forced loss/accuracy, the L1 error of greedily decoded actions (robot units) and,
    with goal tokens, the distance (m) of the decoded goal point from the demonstrated one, over
    all steps (`goal_error_m`) and on each episode's first picture (`first_goal_error_m`: the
    arm still at rest, so only the picture and the instruction say where the hand must go)."""
    if not episodes:
        return {}
    was_training = model.training
    model.eval()
    try:
        return _evaluate(vla, model, episodes, cameras, cfg, codec, device)
    finally:
        model.train(was_training)


def _evaluate(vla: VLA, model, episodes, cameras, cfg: TrainConfig, codec: ActionCodec, device) -> dict:
    losses, correct, total, l1, goal_error = [], 0, 0, [], []
    horizon = cfg.action_horizon
    builder = ModelInputs(vla, codec, cameras, device)
    if vla.action_head is not None:  # --action-head parallel-l1
        batches = eval_batches(episodes, cameras, cfg.image_spec, horizon, cfg.batch_size, cfg.eval_samples)
        return decode.parallel_evaluate(ParallelDecoder(model, vla.action_head), builder, batches, horizon)
    for batch in eval_batches(episodes, cameras, cfg.image_spec, horizon, cfg.batch_size, cfg.eval_samples):
        actions, state = batch["actions"], batch["state"]
        inputs, pix = builder.training(batch)
        out = decode.forward(model, vla, inputs, pix)
        loss, pred, target, _ = decode.action_loss(out.logits, inputs, codec.first_id, _sigmas(cfg, codec, inputs))
        losses.append(loss.item() * len(batch["instruction"]))
        correct += int((pred == target).sum())
        total += int(target.numel())
        for r, ids in _greedy_ids(builder, model, batch, pix, codec.n_tokens(horizon)):
            l1.append(np.abs(codec.decode(ids, state[r]) - actions[r]).mean(axis=(1, 2)))
            if codec.n_goal:
                goal_error.append(np.linalg.norm(codec.decode_goal(ids) - batch["goal"][r], axis=1))
    first_error = []
    if codec.n_goal:
        for batch in eval_batches(
            episodes, cameras, cfg.image_spec, horizon, cfg.batch_size, cfg.eval_samples, first_steps=True
        ):
            pix = builder.pixels(batch["images"])
            for r, ids in _greedy_ids(builder, model, batch, pix, codec.n_goal):
                first_error.append(np.linalg.norm(codec.decode_goal(ids) - batch["goal"][r], axis=1))
    n = sum(len(x) for x in l1)
    result = {
        "loss": sum(losses) / n,
        "action_accuracy": correct / max(1, total),
        "l1": float(np.concatenate(l1).mean()),
    }
    if goal_error:
        result["goal_error_m"] = float(np.concatenate(goal_error).mean())
        result["first_goal_error_m"] = float(np.concatenate(first_error).mean())
    return result


def _set_lr(optimizer, rates) -> float:
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    return float(rates[0])


def _sigmas(cfg: TrainConfig, codec: ActionCodec, inputs: dict):
    """Label widths: --goal-label-sigma on the goal tokens, --action-label-sigma on the rest."""
    goal = cfg.action_label_sigma if cfg.goal_label_sigma is None else cfg.goal_label_sigma
    return decode.label_sigmas(inputs, codec.n_goal, goal, cfg.action_label_sigma)


def _train_l1(codec: ActionCodec, pred: torch.Tensor, inputs: dict, actions, state, goal_only) -> float:
    """L1 (robot units) of the teacher-forced predictions of the samples that have actions."""
    counts = (inputs["labels"][:, 1:] >= codec.first_id).sum(1).tolist()  # the written tokens, not the end of sequence
    rows = [r for i, r in enumerate(torch.split(pred, counts)) if not goal_only[i]]
    if not rows:
        return 0.0
    keep = ~np.asarray(goal_only)
    decoded = codec.decode(torch.stack(rows).cpu().numpy(), state[keep])
    return float(np.abs(decoded - actions[keep]).mean())


# ---- checkpoints ----------------------------------------------------------------------------


def _base_record(cfg, bundled: bool) -> dict:
    """policy_config.json's record of where an adapter's base model is (model.checkpoint_model_source)."""
    if bundled:
        return {"base_source": BASE_IN_CHECKPOINT}
    if Path(cfg.model).expanduser().is_dir():
        return {"base_source": BASE_DIRECTORY, "base_model_dir": str(Path(cfg.model).expanduser().resolve())}
    return {"base_source": BASE_HUB}


def _policy_config(cfg, data, cameras, vla, codec: ActionCodec, step, bundled_base: bool = False) -> dict:
    config = contract.build_policy_config(
        backend=BACKEND,
        base_model=cfg.model,
        image_spec=cfg.image_spec.to_dict(),
        cameras=cameras,
        horizon=cfg.action_horizon,
        statistics=data.statistics,
        default_instruction=data.default_instruction,
        control_rate_hz=data.fps,
        step=step,
        train_config=cfg.to_dict(),
        representation=codec.representation,
        extra={
            "openvla": {
                "family": vla.family,
                "use_lora": cfg.use_lora,
                "action_token_count": codec.n_tokens(cfg.action_horizon),
                "vocab_size": vla.vocab_size,
                "n_bins": 256,
                "state_in_prompt": codec.state_in_prompt,
                "image_position": cfg.image_position,
                "goal_tokens": codec.n_goal > 0,
                "goal_before_state": codec.goal_before_state,
                "weights": "adapter" if cfg.use_lora else "model",
                "action_head": cfg.action_head,
                **({"parallel_head": vla.action_head.settings()} if vla.action_head is not None else {}),
                **_base_record(cfg, bundled_base),
            }
        },
    )
    config["action_space"].update(codec.action_space())
    return config


def make_codec(cfg: TrainConfig, data, vocab_size: int, resume_config: dict | None) -> ActionCodec:
    """The action representation and prompt state of this run. Delta statistics come from the
    training episodes (or, when resuming, from the checkpoint, so they never change mid-run)."""
    if resume_config is not None:
        space = resume_config.get("action_space") or {}
        info = resume_config.get("openvla") or {}
        found = (
            space.get("representation", ABSOLUTE),
            bool(info.get("state_in_prompt")),
            info.get("image_position", IMAGE_FIRST),
            bool(info.get("goal_tokens")),
            bool(info.get("goal_before_state")),
            all((space.get("normalization_mask") or [True])[-1:]),
        )
        wanted = (
            cfg.action_representation,
            bool(cfg.state_in_prompt),
            cfg.image_position,
            bool(cfg.goal_tokens),
            ActionCodec.goal_first_in_effect(cfg.goal_before_state, cfg.goal_tokens, cfg.state_in_prompt),
            bool(cfg.normalize_gripper),
        )
        if found != wanted:
            raise ConfigError(
                f"--resume-from-checkpoint {cfg.resume_from_checkpoint}: trained with --action-representation "
                f"{found[0]}, {'--state-in-prompt' if found[1] else '--no-state-in-prompt'}, --image-position "
                f"{found[2]}, {'--goal-tokens' if found[3] else '--no-goal-tokens'}, "
                f"{'--goal-before-state' if found[4] else '--no-goal-before-state'} and "
                f"{'--normalize-gripper' if found[5] else '--no-normalize-gripper'}; resume with the same"
            )
        return ActionCodec.from_policy_config(vocab_size, {**resume_config, "dataset_statistics": data.statistics})
    model_statistics = None
    if cfg.action_representation != ABSOLUTE:
        model_statistics = model_action_statistics(
            data.train, cfg.action_horizon, delta_mask(cfg.action_representation)
        )
    return ActionCodec(
        vocab_size,
        data.statistics,
        representation=cfg.action_representation,
        model_statistics=model_statistics,
        state_in_prompt=bool(cfg.state_in_prompt),
        goal_tokens=bool(cfg.goal_tokens),
        goal_before_state=bool(cfg.goal_before_state),
        normalization_mask=normalization_mask(cfg.normalize_gripper),
    )


def normalization_mask(normalize_gripper: bool) -> np.ndarray:
    """Which action dimensions are normalised with the statistics: all, or the arm joints only
    (--no-normalize-gripper: the gripper is binned in its own units, clipped to [-1, 1])."""
    mask = np.ones(robot.ACTION_DIM, dtype=bool)
    mask[-1] = bool(normalize_gripper)
    return mask


def save_checkpoint(
    step,
    final,
    *,
    cfg,
    data,
    cameras,
    vla,
    codec,
    optimizer,
    scheduler,
    position,
    total_steps,
    base_dir,
    dist_: Dist,
    device,
    warmup_position=None,
) -> Path:
    """Write checkpoint-{step} (checkpoint-final with `final`); every process must call it. The
    main process writes the directory; under FSDP every process also writes its shard of the
    optimizer state into it (the output directory must then be shared by all nodes)."""
    rng_states = dist_.gather(_rng_state(device))
    model = vla.model
    weights = dd.full_state_dict(model, trainable_only=cfg.use_lora) if dist_.sharded else None
    writer = ckpt.CheckpointWriter(cfg.output_dir, None if final else step)
    d = writer.__enter__() if dist_.main else writer.tmp
    try:
        if dist_.sharded:
            dist_.barrier()  # the directory exists before every process writes into it
            dd.save_optimizer(d / dd.OPTIMIZER_DIR, model, optimizer)
        if dist_.main:
            extra = {} if weights is None else {"state_dict": weights}
            if cfg.use_lora:
                model.save_pretrained(d / "adapter", **extra)
            else:
                model.save_pretrained(d / "model", **extra)
                save_processor(vla, d / "model")
            if vla.action_head is not None:
                save_action_head(vla.action_head, d)
            if base_dir is not None:
                shutil.copytree(base_dir, d / "base")
            save_processor(vla, d / "processor")
            if dist_.sharded:
                torch.save({"scheduler": scheduler.state_dict()}, d / dd.SCHEDULER_FILE)
            else:
                torch.save(
                    {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, d / dd.OPTIMIZER_FILE
                )
            torch.save(rng_states, d / "rng_state.pt")
            state = {
                "step": step,
                "total_steps": total_steps,
                "data_position": position.to_dict(),
                "world_size": dist_.world,
                "global_batch": cfg.batch_size * cfg.grad_accumulation_steps * dist_.world,
                "strategy": dist_.strategy,
                "backend": BACKEND,
            }
            if warmup_position is not None:
                state["goal_warmup_position"] = warmup_position.to_dict()
            ckpt.write_trainer_state(d, state)
            contract.write_policy_config(
                d, _policy_config(cfg, data, cameras, vla, codec, step, bundled_base=base_dir is not None)
            )
    except BaseException as exc:
        if dist_.main:
            writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    if dist_.main:
        writer.__exit__(None, None, None)
    dist_.barrier()
    return ckpt.checkpoint_dir(cfg.output_dir, None if final else step)


def load_optimizer_state(resume_dir: Path, model, optimizer, scheduler, trainable, dist_: Dist, device) -> None:
    """The optimizer and scheduler state of a checkpoint, written by any number of processes
    under either strategy, into this run's optimizer (sharded or not)."""
    if (resume_dir / dd.OPTIMIZER_DIR).is_dir():
        dd.load_optimizer(resume_dir / dd.OPTIMIZER_DIR, model, optimizer)
        state = torch.load(resume_dir / dd.SCHEDULER_FILE, map_location="cpu", weights_only=False)
    else:
        state = torch.load(resume_dir / dd.OPTIMIZER_FILE, map_location=device, weights_only=False)
        if dist_.sharded:
            dd.load_single_optimizer(state["optimizer"], model, optimizer, trainable)
        else:
            optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])


def merge_lora(checkpoint_dir, output=None) -> Path:
    """Fold a LoRA checkpoint's adapter into the base weights; writes a loadable model dir (for
    an OpenVLA base model, in the published layout: published.write_published)."""
    checkpoint_dir = Path(checkpoint_dir)
    config = contract.read_policy_config(checkpoint_dir)
    if not (checkpoint_dir / "adapter").exists():
        raise contract.CheckpointError(f"{checkpoint_dir} holds no LoRA adapter (trained with --no-use-lora?)")
    tc = config.get("train_config") or {}
    source, _ = checkpoint_model_source(checkpoint_dir, config)
    spec = config["image_spec"]
    dtype = torch.bfloat16 if tc.get("precision") == "bf16" else torch.float32
    vla = load_vla(source, image_size=(spec["width"], spec["height"]), dtype=dtype)
    merged = apply_adapter(vla.model, checkpoint_dir / "adapter")
    out = Path(output) if output else checkpoint_dir / "merged"
    if vla.family == "openvla":  # OpenVLA's published layout, for OpenVLA's own tools too
        from crane_x7_vla.backends.openvla.published import write_published

        return write_published(merged, vla, config, out, checkpoint_dir)
    merged.save_pretrained(out)
    save_processor(vla, out)
    return out


# ---- training -------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> Path:
    cfg = cfg.resolved()
    if cfg.backend != BACKEND:
        raise ConfigError(f"the openvla trainer was given --backend {cfg.backend}")
    pre = preflight(cfg)  # data, statistics and resume checks: before any model work
    data = pre.data
    dist_ = Dist(cfg)
    try:
        return _train(cfg, pre, data, dist_)
    finally:
        dist_.close()


def _train(cfg: TrainConfig, pre, data, dist_: Dist) -> Path:
    device = dist_.device
    _seed(cfg.seed)  # every process initialises the new weights (LoRA adapters) alike: FSDP shards them as they are
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)

    source, base_dir = _base_source(cfg, pre, dist_)
    compute = _dtype(cfg, device)
    vla = build_model(
        cfg,
        source,
        dd.load_device(dist_.strategy, device),
        pre.resume_dir if cfg.use_lora else None,
        dtype=dd.load_dtype(dist_.strategy, compute),
    )
    cameras = _cameras(cfg, data.cameras, vla.family)
    vla.num_cameras = len(cameras)
    set_image_position(vla, cfg.image_position)
    codec = make_codec(cfg, data, vla.vocab_size, pre.resume_config)
    vla.action_head = build_action_head(cfg.action_head, vla, cfg.action_horizon, pre.resume_dir, pre.resume_config)
    model = vla.model
    model.train()
    if dist_.rank:
        _seed(cfg.seed + dist_.rank)  # each process its own dropout and augmentation draws
    # with the parallel head, the model and the head are trained as one module
    step_model = model if vla.action_head is None else ParallelDecoder(model, vla.action_head)
    ddp_model = dd.wrap(step_model, dist_, compute)  # before the optimizer: FSDP replaces the parameters
    trainable = [p for p in step_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    stream_kw = dict(
        cameras=cameras,
        spec=cfg.image_spec,
        horizon=cfg.action_horizon,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        rank=dist_.rank,
        world_size=dist_.world,
        num_workers=cfg.num_workers,
        prefetch=cfg.prefetch_batches,
        noop_threshold=cfg.noop_threshold,
    )
    start_step, position, warm_position = 0, DataPosition(), DataPosition()
    if pre.resume_state is not None:
        start_step = int(pre.resume_state["step"])
        position = DataPosition.from_dict(pre.resume_state["data_position"])
        if "goal_warmup_position" in pre.resume_state:
            warm_position = DataPosition.from_dict(pre.resume_state["goal_warmup_position"])
        saved_world = pre.resume_state.get("world_size", 1)
        saved_batch = pre.resume_state.get("global_batch")
        global_batch = cfg.batch_size * cfg.grad_accumulation_steps * dist_.world
        if saved_world != dist_.world and saved_batch != global_batch and dist_.main:
            print(
                f"note: resuming a {saved_world}-process run with {dist_.world} processes and "
                f"{global_batch} samples per step (was {saved_batch or 'not recorded'}): the batches will not be "
                "the same as in an uninterrupted run; keep --batch-size x --grad-accumulation-steps x processes",
                file=sys.stderr,
            )
    scenes = training_goal_scenes(cfg, data.train, cameras, dist_.main)
    stream = BatchStream(data.train + scenes, start=position, **stream_kw)
    # --goal-warmup-steps: the first steps learn where the named cube is from the goal scenes
    # alone, before the demonstrations' actions (and their few, memorisable layouts) join in.
    warm = BatchStream(scenes, start=warm_position, **stream_kw) if start_step < cfg.goal_warmup_steps else None
    steps_per_epoch = math.ceil(stream.batches_per_epoch / cfg.grad_accumulation_steps)
    total_steps = cfg.max_steps or cfg.num_epochs * steps_per_epoch
    if cfg.goal_warmup_steps >= total_steps:
        raise ConfigError(
            f"--goal-warmup-steps ({cfg.goal_warmup_steps}) must be fewer than the {total_steps} "
            "training steps: the actions are learned after it"
        )
    scheduler = make_scheduler(optimizer, cfg, total_steps - cfg.goal_warmup_steps)
    if pre.resume_dir is not None:
        load_optimizer_state(pre.resume_dir, model, optimizer, scheduler, trainable, dist_, device)
        rng = torch.load(pre.resume_dir / "rng_state.pt", weights_only=False)
        _set_rng_state(rng[dist_.rank] if dist_.rank < len(rng) else rng[0], device)

    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    if dist_.main:
        print(
            f"openvla: base {cfg.model} ({vla.family}, {n_total / 1e6:.2f}M params, {n_trainable / 1e6:.2f}M trained"
            f"{', LoRA r=%d' % cfg.lora_rank if cfg.use_lora else ', full weights'}), {len(data.train)} train / "
            f"{len(data.val)} val episodes, cameras {cameras}, actions {codec.representation}"
            f"{' with the state in the prompt' if codec.state_in_prompt else ''}, "
            f"{dist_.world} process(es) on {device} ({dist_.strategy}), "
            f"steps {start_step}->{total_steps}",
            file=sys.stderr,
        )

    hooks = _Hooks(
        cfg=cfg,
        data=data,
        cameras=cameras,
        vla=vla,
        codec=codec,
        ddp_model=ddp_model,
        trainable=trainable,
        optimizer=optimizer,
        scheduler=scheduler,
        stream=stream,
        warm=warm,
        total_steps=total_steps,
        base_dir=base_dir,
        dist_=dist_,
    )
    final = loop.run(cfg, hooks, start_step=start_step, total_steps=total_steps, main=dist_.main)
    if cfg.merge_lora and dist_.main:
        merge_lora(final)
    dist_.barrier()
    return final


class _Hooks(loop.Hooks):
    """The OpenVLA work of the training loop (training/loop.py): one optimizer step over
    --grad-accumulation-steps micro-batches, validation on the main process, checkpoints."""

    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.device = self.dist_.device
        self.inputs = ModelInputs(self.vla, self.codec, self.cameras, self.device)
        self.samples_per_step = self.cfg.batch_size * self.cfg.grad_accumulation_steps * self.dist_.world
        self.lr = 0.0

    def data_wait(self) -> float:
        return self.stream.wait_seconds

    def postfix(self, values: dict) -> dict:
        acc = mn.train_metric("action_accuracy")
        if mn.LOSS not in values or acc not in values:
            return {}
        return {"loss": f"{values[mn.LOSS]:.3f}", "acc": f"{values[acc]:.2f}"}

    def train_step(self, step: int) -> dict:
        cfg, codec, vla, dist_, optimizer = self.cfg, self.codec, self.vla, self.dist_, self.optimizer
        sums = {"loss": 0.0, "correct": 0, "count": 0, "l1": 0.0}
        for micro in range(cfg.grad_accumulation_steps):
            _, batch = next(self.warm if self.warm is not None else self.stream)
            actions, state = batch["actions"], batch["state"]
            sync = micro == cfg.grad_accumulation_steps - 1
            if vla.action_head is not None:  # --action-head parallel-l1
                with dd.gradient_sync(self.ddp_model, dist_, sync):
                    loss, correct, count, l1 = decode.parallel_step(
                        self.ddp_model, self.inputs, batch, cfg.action_horizon
                    )
                    (loss / cfg.grad_accumulation_steps).backward()
                sums["loss"] += loss.item() / cfg.grad_accumulation_steps
                sums["correct"], sums["count"] = sums["correct"] + correct, sums["count"] + count
                sums["l1"] += l1 / cfg.grad_accumulation_steps
                continue
            inputs, pix = self.inputs.training(batch)
            with dd.gradient_sync(self.ddp_model, dist_, sync):
                out = decode.forward(self.ddp_model, vla, inputs, pix)
                loss, pred, target, _ = decode.action_loss(
                    out.logits, inputs, codec.first_id, _sigmas(cfg, codec, inputs)
                )
                (loss / cfg.grad_accumulation_steps).backward()
            sums["loss"] += loss.item() / cfg.grad_accumulation_steps
            sums["correct"] += int((pred == target).sum())
            sums["count"] += int(target.numel())
            sums["l1"] += (
                _train_l1(codec, pred, inputs, actions, state, batch["goal_only"]) / cfg.grad_accumulation_steps
            )
        grad_norm = None
        if cfg.max_grad_norm > 0:
            grad_norm = dd.to_float(torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm))
        if self.warm is not None:  # the goal warm-up runs at its own constant rate; the schedule waits
            self.lr = _set_lr(optimizer, [cfg.goal_warmup_lr or cfg.learning_rate] * len(optimizer.param_groups))
            optimizer.step()
        else:
            self.lr = self.scheduler.get_last_lr()[0]
            optimizer.step()
            self.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if self.warm is not None and step + 1 >= cfg.goal_warmup_steps:
            self.warm.close()
            self.warm = None
            _set_lr(optimizer, self.scheduler.get_last_lr())  # the schedule starts (with its own warm-up)
        return dist_.mean(
            {
                mn.LOSS: sums["loss"],
                mn.train_metric("action_accuracy"): sums["correct"] / sums["count"],
                mn.train_metric("l1"): sums["l1"],
                mn.GRAD_NORM: grad_norm or 0.0,
            }
        )

    def logged(self, step: int) -> dict:
        return {mn.LEARNING_RATE: self.lr, mn.EPOCH: self.stream.position.epoch}

    def save(self, step: int, final: bool) -> Path:
        return save_checkpoint(
            step,
            final,
            cfg=self.cfg,
            data=self.data,
            cameras=self.cameras,
            vla=self.vla,
            codec=self.codec,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            position=self.stream.position,
            total_steps=self.total_steps,
            base_dir=self.base_dir,
            dist_=self.dist_,
            device=self.device,
            warmup_position=self.warm.position if self.warm is not None and not final else None,
        )

    def evaluate(self, step: int) -> dict:
        """Validation metrics on the main process (the others wait for it; under FSDP every
        process runs the same evaluation, each forward pass gathering the sharded weights)."""
        try:
            values = {}
            if self.dist_.main or self.dist_.sharded:
                for split, episodes in ((mn.VAL, self.data.val), (mn.TRAIN_EVAL, self.data.train)):
                    for k, v in evaluate(
                        self.vla, self.vla.model, episodes, self.cameras, self.cfg, self.codec, self.device
                    ).items():
                        values[mn.eval_metric(split, k)] = v
            return values if self.dist_.main else {}
        except Exception:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise
        finally:
            self.dist_.barrier()

    def close(self) -> None:
        self.stream.close()
        if self.warm is not None:
            self.warm.close()
