"""`train(cfg) -> Path`: fine-tune the π0-style policy on CRANE-X7 episodes (JAX/Flax).

Order of work: every check that can fail on bad input (data, statistics, resume checkpoint,
model/image/batch/device settings, tokenizer and weight files) runs BEFORE the model is
built or anything is compiled. Then: action statistics for the model space, tokenizer,
model, optimizer, one jitted step over a (data, fsdp) mesh of all devices of all processes
(distributed.py: jax.distributed, weights sharded over the fsdp axis, each process loading its
own samples), checkpoints written by all processes together every --save-steps and
`checkpoint-final`.

Backend settings: OpenPIConfig (config.py), e.g. --ema-decay, --tokenizer, --conventions,
--image-slots, --norm-stats-asset.
`--model` is a preset (tiny, pi0) or an openpi π0 checkpoint directory (the network its
weights describe, with those weights).
"""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from crane_x7_vla import checkpoint_contract as contract
from crane_x7_vla.backends.openpi.base_model import MARKER, PretrainedBase, read_base
from crane_x7_vla.backends.openpi.config import OpenPIConfig
from crane_x7_vla.training import checkpoint as ckpt
from crane_x7_vla.training.config import ConfigError, TrainConfig


def _given(cfg: TrainConfig, name: str) -> bool:
    """Whether a setting differs from TrainConfig's default (was chosen for this run)."""
    import dataclasses

    return getattr(cfg, name) != {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]


#: LoRA ranks of openpi's LoRA fine-tuning variants (gemma_2b_lora, gemma_300m_lora), alpha = rank.
OPENPI_LORA_RANKS = (16, 32)


def model_config(cfg: TrainConfig, num_cameras: int, precision: str):
    """(ModelConfig, OpenpiCheckpoint, PretrainedBase or None) from the run settings; raises ConfigError.

    A preset (tiny, pi0), or a base model that `crane-x7-vla pretrain --backend openpi` wrote
    from one (same network, pretrained weights, its own tokenizer), gets LoRA on the prefix
    decoder from --lora-rank / --lora-alpha. An
    openpi checkpoint directory builds the network its weights describe; its own LoRA
    adapters set ranks and places (an explicit --lora-rank must agree with the prefix
    decoder's), otherwise LoRA goes where openpi's LoRA fine-tuning puts it: both decoders,
    attention and MLP; the prefix decoder rank 16 (or --lora-rank), alpha = rank (or
    --lora-alpha); the action expert rank 32, alpha 32 (gemma_300m_lora); no LoRA dropout
    (or --lora-dropout). Settings equal to TrainConfig's defaults count as not given.
    """
    from crane_x7_vla.backends.openpi.presets import PRESETS

    name = str(cfg.model)
    w, h = cfg.image_spec.width, cfg.image_spec.height
    run = dict(
        image_width=w,
        image_height=h,
        num_cameras=num_cameras,
        action_horizon=int(cfg.action_horizon),
        dtype={"bf16": "bfloat16", "fp32": "float32"}[precision],
        remat=bool(cfg.gradient_checkpointing),
    )
    base = read_base(name)
    if base is not None and base.get("preset") not in PRESETS:
        raise ConfigError(f"--model {name}: {MARKER} names preset {base.get('preset')!r}, "
                          f"not one of {', '.join(PRESETS)}")
    if base is not None and [w, h] != list(base.get("image_size") or []):
        bw, bh = base.get("image_size") or ("?", "?")
        raise ConfigError(f"--image-size {w}x{h}: the base model {name} was pretrained at {bw}x{bh}; "
                          f"use --image-size {bw}x{bh}")
    if name in PRESETS or base is not None:
        weights = None if base is None else PretrainedBase(name)
        mcfg = replace(
            PRESETS[name if base is None else base["preset"]],
            **run,
            lora_rank=int(cfg.lora_rank) if cfg.use_lora else 0,
            lora_alpha=float(cfg.lora_alpha),
            expert_lora_rank=0,
            lora_dropout=float(cfg.lora_dropout) if cfg.use_lora else 0.0,
        )
    elif Path(name).expanduser().is_dir():
        weights, mcfg = _from_openpi_checkpoint(cfg, name, replace(PRESETS["pi0"], **run))
    else:
        raise ConfigError(
            f"--model '{name}': not an openpi preset ({', '.join(PRESETS)}) nor a directory with openpi π0 parameters"
        )
    try:
        mcfg.validate()
    except ValueError as exc:
        raise ConfigError(f"--model {name}: {exc}") from None
    return mcfg, weights


def _from_openpi_checkpoint(cfg: TrainConfig, name: str, base):
    from crane_x7_vla.backends.openpi.openpi_import import OpenpiCheckpointError, OpenpiCheckpoint, infer_config

    try:
        ckpt_dir = OpenpiCheckpoint(name)
        mcfg = infer_config(ckpt_dir.shapes(), base)
    except OpenpiCheckpointError as exc:
        raise ConfigError(f"--model {name}: {exc}") from None
    ranks = {r for r in (mcfg.lora_rank, mcfg.expert_lora_rank) if r}
    alpha = float(cfg.lora_alpha) if _given(cfg, "lora_alpha") else None
    if ranks:
        if not cfg.use_lora:
            raise ConfigError(
                f"--model {name}: the checkpoint carries LoRA adapters (PaliGemma/llm/layers/.../lora_a, "
                f"rank {'/'.join(map(str, sorted(ranks)))}); train them with LoRA (drop --no-use-lora)"
            )
        if mcfg.lora_rank and _given(cfg, "lora_rank") and int(cfg.lora_rank) != mcfg.lora_rank:
            raise ConfigError(
                f"--lora-rank {cfg.lora_rank}: the checkpoint's LoRA adapters of the prefix decoder "
                f"(PaliGemma/llm/layers/attn/q_einsum/lora_a) have rank {mcfg.lora_rank}; leave --lora-rank "
                f"out or set it to {mcfg.lora_rank}"
            )
        p_rank, e_rank = mcfg.lora_rank, mcfg.expert_lora_rank
    elif cfg.use_lora:
        p_rank = int(cfg.lora_rank) if _given(cfg, "lora_rank") else OPENPI_LORA_RANKS[0]
        e_rank = OPENPI_LORA_RANKS[1]
        mcfg = replace(mcfg, lora_groups=("attn", "ffn"))
    else:
        p_rank = e_rank = 0
    mcfg = replace(
        mcfg,
        lora_rank=p_rank,
        expert_lora_rank=e_rank,
        lora_alpha=alpha or float(p_rank or 1),
        expert_lora_alpha=float(e_rank or 1),
        lora_dropout=float(cfg.lora_dropout) if _given(cfg, "lora_dropout") and cfg.use_lora else 0.0,
    )
    return ckpt_dir, mcfg


def select_devices(device: str):
    """The devices of the run: of every process when several train together."""
    import jax

    if jax.process_count() > 1 and device.startswith("cuda:"):
        raise ConfigError(f"--device {device} names one GPU; a run of several processes uses every GPU: --device cuda")
    try:
        if device == "auto":
            return jax.devices()
        if device == "cpu":
            return jax.devices("cpu")
        if device.startswith("cuda"):
            gpus = jax.devices("gpu")
            if device == "cuda":
                return gpus
            index = int(device.split(":", 1)[1])
            if index >= len(gpus):
                raise ConfigError(f"--device {device}: only {len(gpus)} GPU(s) visible")
            return [gpus[index]]
    except RuntimeError:
        raise ConfigError(f"--device {device}: JAX sees no such device (installed jaxlib: CPU only?)") from None
    raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N (got '{device}')")


def _precision(cfg: TrainConfig, devices) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if devices[0].platform in ("gpu", "tpu") else "fp32"


def train(cfg: TrainConfig) -> Path:
    from crane_x7_vla.training.preflight import preflight

    cfg: OpenPIConfig = cfg.resolved()
    if cfg.tokenizer and not Path(cfg.tokenizer).is_file():
        raise ConfigError(f"--tokenizer: {cfg.tokenizer} not found")
    pre = preflight(cfg)  # data, statistics, resume checkpoint: clear errors, nothing built yet
    data = pre.data
    from crane_x7_vla.backends.openpi import distributed

    distributed.initialize(cfg)
    devices = select_devices(cfg.device)
    local = len(devices) // _process_count()
    if cfg.batch_size % local:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} (per process) cannot be split evenly over this process's {local} "
            f"device(s); use a multiple of {local}"
        )
    distributed.make_mesh(devices, cfg.fsdp_devices)  # --fsdp-devices checked before building
    precision = _precision(cfg, devices)
    conv = _conventions(cfg, pre, data.cameras)
    mcfg, weights_dir = model_config(cfg, conv.num_images(data.cameras), precision)
    openpi_dir = weights_dir is not None and not isinstance(weights_dir, PretrainedBase)
    if cfg.norm_stats_asset and not openpi_dir:
        raise ConfigError("--norm-stats-asset names an asset of an openpi checkpoint; --model is none")
    if openpi_dir and not cfg.tokenizer:
        raise ConfigError(
            f"--model {weights_dir.path}: openpi weights expect PaliGemma's tokenizer; set --tokenizer to its "
            f"SentencePiece model (paligemma_tokenizer.model) or tokenizer.json"
        )
    if pre.resume_config is not None:
        saved = (pre.resume_config.get("openpi") or {}).get("model_config")
        if saved:
            from crane_x7_vla.backends.openpi.presets import ModelConfig

            try:
                saved = ModelConfig.from_dict(saved).to_dict()
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{pre.resume_dir}: {contract.CONFIG_FILE} openpi.model_config: {exc}") from None
        if saved and saved != mcfg.to_dict():
            diff = sorted(k for k in saved if saved[k] != mcfg.to_dict().get(k))
            raise ConfigError(
                f"{pre.resume_dir}: trained with other model settings ({', '.join(diff)}); resume with the same flags"
            )
    run = _Run(cfg, pre, devices, mcfg, weights_dir, precision, conv)
    run.space = run._space()  # statistics (of the data or of the checkpoint's assets) checked before building
    return run.run()


def _process_count() -> int:
    import jax

    return jax.process_count()


def _main_process() -> bool:
    import jax

    return jax.process_index() == 0


def _conventions(cfg: OpenPIConfig, pre, cameras):
    """The run's Conventions: the resumed checkpoint's, or --conventions (auto: openpi
    for an openpi checkpoint directory, this backend's own for a preset)."""
    from crane_x7_vla.backends.openpi import conventions as cv
    from crane_x7_vla.backends.openpi.presets import PRESETS

    if pre.resume_config is not None:
        try:
            return cv.Conventions.from_dict(
                (pre.resume_config.get("openpi") or {}).get("conventions"), f"{pre.resume_dir}: openpi.conventions"
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    choice = cfg.conventions
    if choice == "auto":
        choice = "crane_x7" if str(cfg.model) in PRESETS or read_base(cfg.model) is not None else "openpi"
    if choice == "crane_x7":
        if cfg.image_slots is not None:
            raise ConfigError("--image-slots places cameras in openpi's image slots; it needs --conventions openpi")
        return cv.CRANE_X7
    try:
        return cv.openpi(cameras, cfg.image_slots)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class _Run:
    def __init__(self, cfg: OpenPIConfig, pre, devices, mcfg, weights_dir, precision, conv):
        self.cfg, self.pre, self.devices = cfg, pre, devices
        self.mcfg, self.weights_dir, self.precision, self.conv = mcfg, weights_dir, precision, conv
        self.data = pre.data
        self.out = Path(cfg.output_dir)
        spec = replace(cfg.image_spec, resize=conv.image_resize)
        if conv.image_resize == "pad" and not _given(cfg, "crop_scale"):
            spec = replace(spec, crop_scale=0.95**2)  # openpi's training crop: 95 % of each side
        if pre.resume_config is not None:
            from crane_x7_vla.preprocess import ImageSpec

            spec = ImageSpec.from_dict(pre.resume_config["image_spec"])
        self.spec = spec
        cams = self.data.cameras if conv.image_slots is None else [c for c in conv.image_slots if c]
        self.cameras = list(dict.fromkeys(cams))

    # ---- set-up ------------------------------------------------------------------------
    def _tokenizer(self):
        from crane_x7_vla.backends.openpi.ckpt_io import TOKENIZER_FILE
        from crane_x7_vla.backends.openpi.tokenizer import PromptTokenizer

        L, fmt = self.mcfg.max_token_len, self.conv.prompt
        if self.pre.resume_dir is not None:
            name = (self.pre.resume_config.get("openpi") or {}).get("tokenizer_file", TOKENIZER_FILE)
            tok = PromptTokenizer.from_file(self.pre.resume_dir / name, L, fmt)
        elif isinstance(self.weights_dir, PretrainedBase) and not self.cfg.tokenizer:
            tok = PromptTokenizer.from_file(self.weights_dir.tokenizer_file, L, fmt)
        elif self.cfg.tokenizer:
            try:
                tok = PromptTokenizer.from_file(self.cfg.tokenizer, L, fmt)
            except ValueError as exc:
                raise ConfigError(f"--tokenizer: {exc}") from None
        else:
            texts = [e.instruction for e in self.data.train + self.data.val] + [self.cfg.instruction]
            tok = PromptTokenizer.train(texts, min(int(self.cfg.tokenizer_vocab), self.mcfg.vocab_size), L)
        if tok.vocab_size > self.mcfg.vocab_size:
            raise ConfigError(
                f"tokenizer {tok.source} has {tok.vocab_size} tokens, the model's embedding only {self.mcfg.vocab_size}"
            )
        long = sorted({e.instruction for e in self.data.train if tok.encode(e.instruction)[2]})
        if long:
            print(
                f"warning: {len(long)} instruction(s) exceed {L} tokens and are cut, e.g. '{long[0]}'", file=sys.stderr
            )
        return tok

    def _space(self):
        from crane_x7_vla.backends.openpi.transforms import ActionSpace, model_action_statistics

        if self.pre.resume_config is not None:
            return ActionSpace.from_config(self.pre.resume_config)
        from crane_x7_vla.backends.openpi.transforms import GOAL_DIMS

        kind, asset = self.conv.normalization, self.cfg.norm_stats_asset
        goal = None
        if self.cfg.goal_dims:
            if asset or self.conv.loss == "all_dims":
                raise ConfigError("--goal-dims writes the goal point into spare action dimensions, which openpi's "
                                  "conventions train as padding: use it with --conventions crane_x7")
            if self.mcfg.action_dim <= max(GOAL_DIMS):
                raise ConfigError(f"--goal-dims needs 3 spare action dimensions; the model has {self.mcfg.action_dim}")
            goal = GOAL_DIMS
        if asset:
            return self._asset_space(asset, kind)
        stats = model_action_statistics(self.data.train, self.mcfg.action_horizon)
        try:
            return ActionSpace(
                self.mcfg.action_horizon,
                self.mcfg.action_dim,
                stats,
                self.data.statistics["proprio"],
                normalization=kind,
                goal_dims=goal,
            )
        except KeyError as exc:
            raise ConfigError(
                f"{self.cfg.data_root}: dataset statistics: {exc.args[0]}; regenerate them with "
                f"`crane-x7-vla dataset stats`"
            ) from None

    def _asset_space(self, asset: str, kind: str):
        """The action space with the statistics of `--model`'s assets/<asset>/norm_stats.json."""
        from crane_x7_vla import robot
        from crane_x7_vla.backends.openpi.openpi_import import OpenpiCheckpointError
        from crane_x7_vla.backends.openpi.transforms import ActionSpace

        ck = self.weights_dir
        if asset not in ck.asset_ids():
            raise ConfigError(
                f"--norm-stats-asset {asset!r}: {ck.assets_dir / asset / 'norm_stats.json'} not found "
                f"(assets with norm stats: {', '.join(ck.asset_ids()) or 'none'})"
            )
        try:
            stats = ck.norm_stats(asset)
        except OpenpiCheckpointError as exc:
            raise ConfigError(str(exc)) from None
        where = ck.assets_dir / asset / "norm_stats.json"
        for key in ("state", "actions"):
            if key not in stats:
                raise ConfigError(f"{where}: norm_stats has no '{key}' entry")
            n = len(next(iter(stats[key].values())))
            if n != robot.ACTION_DIM:
                raise ConfigError(
                    f"{where}: norm_stats.{key} has {n} values; the CRANE-X7 has {robot.ACTION_DIM} "
                    f"(7 arm joints as deltas, gripper absolute)"
                )
        try:
            return ActionSpace(
                self.mcfg.action_horizon,
                self.mcfg.action_dim,
                stats["actions"],
                stats["state"],
                normalization=kind,
                state_from_dataset=False,
            )
        except KeyError as exc:
            raise ConfigError(f"{where}: {exc.args[0]}") from None

    def policy_config(self, step: int, space) -> dict:
        cfg = self.cfg
        return contract.build_policy_config(
            backend="openpi",
            base_model=str(cfg.model),
            image_spec=self.spec.to_dict(),
            cameras=self.cameras,
            horizon=self.mcfg.action_horizon,
            statistics=self.data.statistics,
            default_instruction=self.data.default_instruction or cfg.instruction,
            control_rate_hz=self.data.fps or 10.0,
            step=step,
            train_config=cfg.to_dict(),
            representation="delta_arm_absolute_gripper",
            extra={
                "action_space": space.to_dict(),
                "openpi": {
                    "model_config": self.mcfg.to_dict(),
                    "num_inference_steps": int(cfg.num_inference_steps),
                    "tokenizer_file": self.tokenizer_file,
                    "conventions": self.conv.to_dict(),
                    "ema_decay": float(cfg.ema_decay),
                    "precision": self.precision,
                },
            },
        )

    # ---- the run -----------------------------------------------------------------------
    def run(self) -> Path:
        import jax
        from flax import nnx
        from jax.sharding import NamedSharding, PartitionSpec as P

        from crane_x7_vla.backends.openpi import ckpt_io, distributed, train_state as ts
        from crane_x7_vla.backends.openpi.batching import Batcher
        from crane_x7_vla.training.data import BatchStream, DataPosition, SampleIndex
        from crane_x7_vla.training.goal_scenes import training_goal_scenes
        from crane_x7_vla.training import loop

        cfg, mcfg, data = self.cfg, self.mcfg, self.data
        tokenizer = self._tokenizer()
        self.tokenizer_file = tokenizer.file_name
        space = self.space
        batcher = Batcher(space, tokenizer, self.cameras, slots=self.conv.image_slots)
        all_dims = self.conv.loss == "all_dims"
        accum = int(cfg.grad_accumulation_steps)

        processes, rank = jax.process_count(), jax.process_index()
        scenes = training_goal_scenes(cfg, data.train, self.cameras, rank == 0)
        per_epoch = SampleIndex(data.train + scenes, cfg.batch_size * processes, cfg.seed,
                                cfg.noop_threshold).batches_per_epoch
        total = int(cfg.max_steps) if cfg.max_steps else int(cfg.num_epochs) * max(1, per_epoch // accum)

        # model + optimizer
        freeze = dict(freeze_vision=bool(cfg.freeze_vision), freeze_prefix=bool(cfg.freeze_prefix))
        init = None
        if self.weights_dir is not None and self.pre.resume_dir is None:
            from crane_x7_vla.backends.openpi.openpi_import import import_params

            init = (self.weights_dir.weights() if isinstance(self.weights_dir, PretrainedBase)
                    else import_params(self.weights_dir.params()))
        parts = ts.build(mcfg, cfg.seed, init_params=init, **freeze)
        schedule = ts.learning_rate_schedule(float(cfg.learning_rate), total, cfg.warmup_ratio, cfg.lr_scheduler)
        tx = ts.optimizer(schedule, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm)
        trainable, frozen = parts.trainable, parts.frozen
        opt_state = tx.init(trainable)
        ema = jax.tree.map(lambda x: x.copy(), trainable)  # own buffers (both are donated to the step)
        start_step, position = 0, DataPosition()
        if self.pre.resume_dir is not None:
            restored = ckpt_io.restore_numpy(self.pre.resume_dir / ckpt_io.PARAMS_DIR)
            where = str(self.pre.resume_dir)
            frozen = ckpt_io.fill_state(frozen, _subtree(restored, nnx.to_pure_dict(frozen)), where)
            t, e, opt_state = ckpt_io.load_train_state(self.pre.resume_dir, opt_state)
            trainable = ckpt_io.fill_state(trainable, t, where)
            ema = ckpt_io.fill_state(jax.tree.map(lambda x: x.copy(), trainable), e, where)
            start_step = int(self.pre.resume_state["step"])
            position = DataPosition.from_dict(self.pre.resume_state.get("data_position"))
        n_train = sum(x.size for x in jax.tree.leaves(trainable))
        n_all = n_train + sum(x.size for x in jax.tree.leaves(frozen))

        mesh = distributed.make_mesh(self.devices, int(cfg.fsdp_devices))
        rep = NamedSharding(mesh, P())
        batch_sh = distributed.batch_sharding(mesh)
        state_sh = distributed.shardings((trainable, frozen, ema, opt_state), mesh, float(cfg.fsdp_min_mbytes))
        train_sh, frozen_sh, ema_sh, opt_sh = state_sh
        trainable, frozen, ema, opt_state = distributed.place((trainable, frozen, ema, opt_state), state_sh)
        step_fn = distributed.Aligned(
            jax.jit(
                ts.make_train_step(parts.graphdef, tx, mcfg, cfg.seed, float(cfg.ema_decay), all_dims,
                                   space.goal_dims or ()),
                in_shardings=(train_sh, frozen_sh, ema_sh, opt_sh, batch_sh, rep),
                out_shardings=(train_sh, ema_sh, opt_sh, rep),
                donate_argnums=(0, 2, 3),
            ),
            "train step",
        )
        evaluator = _Evaluator(
            parts.graphdef,
            mcfg,
            batcher,
            space,
            data,
            cfg,
            mesh,
            int(cfg.num_inference_steps),
            self.spec,
            self.cameras,
            all_dims,
        )

        per_device = distributed.sharded_bytes((trainable, frozen, ema, opt_state))
        if rank == 0:
            print(
                f"openpi: {mcfg.vision.depth}-layer vision, {mcfg.prefix.depth}-layer decoders, {n_all / 1e6:.1f}M "
                f"params ({n_train / 1e6:.2f}M trained), {len(self.devices)} device(s) [{self.devices[0].platform}] "
                f"in {processes} process(es), mesh data {mesh.shape['data']} x fsdp {mesh.shape['fsdp']} "
                f"({per_device / 2**20:.1f} MiB of weights and optimizer state per device), {self.precision}, "
                f"horizon {mcfg.action_horizon}, {total} steps",
                file=sys.stderr,
            )
        stream = BatchStream(
            data.train + scenes,
            cameras=self.cameras,
            spec=self.spec,
            horizon=mcfg.action_horizon,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            rank=rank,
            world_size=processes,
            start=position,
            num_workers=cfg.num_workers,
            prefetch=cfg.prefetch_batches,
            noop_threshold=cfg.noop_threshold,
        )
        hooks = _Hooks(self, stream, batcher, batch_sh, step_fn, schedule, evaluator, space, tokenizer)
        hooks.state = (trainable, frozen, ema, opt_state)
        return loop.run(cfg, hooks, start_step=start_step, total_steps=total, main=rank == 0)

    def _save(self, step, space, tokenizer, trainable, ema, frozen, opt_state, position, *, at_step=None):
        """checkpoint-{step}, or checkpoint-final (step None) of the run at optimizer step `at_step`.
        Every process calls it: each writes the pieces of the weights and optimizer state its
        devices hold (orbax); process 0 writes the rest and moves the directory into place."""
        from flax import nnx

        from crane_x7_vla.backends.openpi import ckpt_io, distributed
        from crane_x7_vla.backends.openpi.train_state import merge_lora

        main = _main_process()
        real_step = step if step is not None else at_step
        params = ckpt_io.deep_merge(nnx.to_pure_dict(ema), nnx.to_pure_dict(frozen))
        writer = ckpt.CheckpointWriter(self.out, step)
        d = writer.__enter__() if main else writer.tmp
        try:
            distributed.sync("checkpoint directory")
            ckpt_io.save_params(d, params)
            ckpt_io.save_train_state(d, nnx.to_pure_dict(trainable), nnx.to_pure_dict(ema), opt_state)
            config = self.policy_config(real_step, space)
            merged = None
            if step is None and self.cfg.merge_lora and self.mcfg.has_lora:
                merged = merge_lora(ckpt_io.flat_paths(params), self.mcfg)
                if main:
                    (d / "merged").mkdir()
                distributed.sync("merged directory")
                ckpt_io.save_params(d / "merged", ckpt_io.nest(merged))
            if main:
                tokenizer.save(d / self.tokenizer_file)
                contract.write_policy_config(d, config)
                state = {"step": real_step, "data_position": position.to_dict(), "backend": "openpi",
                         "seed": self.cfg.seed, "processes": _process_count()}
                ckpt.write_trainer_state(d, state)
                if merged is not None:
                    m = d / "merged"
                    mconfig = dict(config)
                    mconfig["openpi"] = dict(config["openpi"], model_config=self.mcfg.without_lora().to_dict())
                    contract.write_policy_config(m, mconfig)
                    shutil.copy(d / self.tokenizer_file, m / self.tokenizer_file)
        except BaseException as exc:
            if main:
                writer.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if main:
            writer.__exit__(None, None, None)
        distributed.sync("checkpoint written")
        return ckpt.checkpoint_dir(self.out, step)


class _Hooks:
    """The OpenPI work of the training loop (training/loop.py): one jitted data-parallel step
    over --grad-accumulation-steps micro-batches, validation, checkpoints."""

    desc = "train openpi"

    def __init__(self, run: _Run, stream, batcher, batch_sh, step_fn, schedule, evaluator, space, tokenizer):
        self.run, self.stream, self.batcher, self.batch_sh = run, stream, batcher, batch_sh
        self.step_fn, self.schedule, self.evaluator = step_fn, schedule, evaluator
        self.space, self.tokenizer = space, tokenizer
        self.accum = int(run.cfg.grad_accumulation_steps)
        self.samples_per_step = run.cfg.batch_size * self.accum * _process_count()
        self.state = None  # (trainable, frozen, ema, opt_state)
        self.metrics = None

    def train_step(self, step: int) -> dict:
        from crane_x7_vla.backends.openpi.batching import stack_micro
        from crane_x7_vla.backends.openpi.distributed import global_batch

        micro = [self.batcher.training(next(self.stream)[1]) for _ in range(self.accum)]
        batch = global_batch(stack_micro(micro), self.batch_sh)
        trainable, frozen, ema, opt_state = self.state
        trainable, ema, opt_state, self.metrics = self.step_fn(
            trainable, frozen, ema, opt_state, batch, np.int32(step)
        )
        self.state = (trainable, frozen, ema, opt_state)
        return {}  # the step's results stay on the device until a logging step asks for them

    def logged(self, step: int) -> dict:
        from crane_x7_vla.training import metrics as mn

        loss = float(self.metrics["loss"])
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at step {step}; lower --learning-rate or check the data"
            )
        return {
            mn.LOSS: loss,
            mn.GRAD_NORM: float(self.metrics["grad_norm"]),
            mn.LEARNING_RATE: float(self.schedule(step - 1)),
            mn.EPOCH: self.stream.position.epoch,
        }

    def data_wait(self) -> float:
        return self.stream.wait_seconds

    def postfix(self, values: dict) -> dict:
        from crane_x7_vla.training import metrics as mn

        return {"loss": f"{values[mn.LOSS]:.4f}"} if mn.LOSS in values else {}

    def evaluate(self, step: int) -> dict:
        trainable, frozen, ema, _ = self.state
        values = self.evaluator(trainable, ema, frozen)  # every process takes part, process 0 reports
        return values if _main_process() else {}

    def save(self, step: int, final: bool) -> Path:
        trainable, frozen, ema, opt_state = self.state
        return self.run._save(
            None if final else step,
            self.space,
            self.tokenizer,
            trainable,
            ema,
            frozen,
            opt_state,
            self.stream.position,
            at_step=step,
        )

    def close(self) -> None:
        self.stream.close()


def _subtree(full: dict, like: dict) -> dict:
    """The part of `full` with the keys of `like` (nested dicts)."""
    return {k: _subtree(full[k], v) if isinstance(v, dict) else full[k] for k, v in like.items()}


class _Evaluator:
    """Validation: flow-matching loss (fixed noise) and L1 error of sampled absolute actions (rad)."""

    def __init__(self, graphdef, mcfg, batcher, space, data, cfg, mesh, num_steps, spec, cameras, all_dims):
        import jax

        from crane_x7_vla.backends.openpi import train_state as ts

        self.batcher, self.space, self.data, self.cfg, self.mcfg = batcher, space, data, cfg, mcfg
        self.spec, self.cameras = spec, cameras
        from jax.sharding import NamedSharding, PartitionSpec as P

        from crane_x7_vla.backends.openpi.distributed import Aligned

        self.n_dev = mesh.devices.size
        self.rep = NamedSharding(mesh, P())
        # every process evaluates the same samples; the results are replicated so each can read them
        self.loss = Aligned(jax.jit(ts.make_eval_loss(graphdef, mcfg, all_dims, space.goal_dims or ()),
                                    out_shardings=self.rep), "eval loss")
        self.sample = Aligned(jax.jit(ts.make_sampler(graphdef, num_steps), out_shardings=self.rep), "sampler")

    def _split(self, episodes, prefix, trainable, ema, frozen):
        import jax

        from crane_x7_vla.training.data import eval_batches
        from crane_x7_vla.training.metrics import eval_metric

        if not episodes:
            return {}
        losses, l1, goal = [], [], []
        per_step = self.cfg.batch_size * _process_count()  # the global batch: the same at any process count
        bs = max(self.n_dev, per_step // max(1, self.n_dev) * self.n_dev)
        for i, b in enumerate(
            eval_batches(episodes, self.cameras, self.spec, self.mcfg.action_horizon, bs, self.cfg.eval_samples)
        ):
            mb = self._replicated(self.batcher.training(b))
            key = jax.random.key(1000 + i)
            losses.append(float(self.loss(trainable, frozen, mb, key)))
            obs = {k: v for k, v in mb.items() if k != "actions"}
            sampled = np.asarray(self.sample(obs, key, ema, frozen))
            pred = self.space.decode_actions(sampled, b["state"])
            l1.append(np.abs(pred - b["actions"]).mean(axis=(1, 2)))
            if self.space.goal_dims is not None:
                goal.append(np.linalg.norm(self.space.decode_goal(sampled) - b["goal"], axis=-1))
        out = {
            eval_metric(prefix, "loss"): float(np.mean(losses)),
            eval_metric(prefix, "l1"): float(np.concatenate(l1).mean()),
        }
        if goal:  # metres between the goal point the chunks write and the recorded one
            out[eval_metric(prefix, "goal_error_m")] = float(np.median(np.concatenate(goal)))
        return out

    def _replicated(self, batch: dict) -> dict:
        from crane_x7_vla.backends.openpi.distributed import place

        return place(batch, {k: self.rep for k in batch})

    def __call__(self, trainable, ema, frozen) -> dict:
        from crane_x7_vla.training.metrics import TRAIN_EVAL, VAL

        out = self._split(self.data.train, TRAIN_EVAL, trainable, ema, frozen)
        out.update(self._split(self.data.val, VAL, trainable, ema, frozen))
        return out
