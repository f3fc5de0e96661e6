"""`train(cfg) -> Path`: fine-tune the π0-style policy on CRANE-X7 episodes (JAX/Flax).

Order of work: every check that can fail on bad input (data, statistics, resume checkpoint,
model/image/batch/device settings, tokenizer and weight files) runs BEFORE the model is
built or anything is compiled. Then: action statistics for the model space, tokenizer,
model, optimizer, data-parallel step over all selected devices (Mesh + NamedSharding on
the batch axis), checkpoints every --save-steps and `checkpoint-final`.

Backend settings under `extra` (YAML `--config`): ema_decay (0.99; 0 = off),
freeze_vision (false), freeze_prefix (false), tokenizer (path of a tokenizers JSON file,
e.g. PaliGemma's), num_inference_steps (10), tokenizer_vocab (512, local BPE size).
`--model` is a preset (tiny, pi0) or an openpi π0 checkpoint directory (π0 shape + its weights).
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from crane_x7_vla.training import checkpoint as ckpt
from crane_x7_vla.training.config import ConfigError, TrainConfig

EXTRA_DEFAULTS = {
    "ema_decay": 0.99,
    "freeze_vision": False,
    "freeze_prefix": False,
    "tokenizer": None,
    "num_inference_steps": 10,
    "tokenizer_vocab": 512,
}


def backend_settings(cfg: TrainConfig) -> dict:
    unknown = sorted(set(cfg.extra) - set(EXTRA_DEFAULTS))
    if unknown:
        raise ConfigError(f"extra: unknown openpi setting(s) {unknown}; known: {sorted(EXTRA_DEFAULTS)}")
    s = {**EXTRA_DEFAULTS, **cfg.extra}
    if not 0.0 <= float(s["ema_decay"]) < 1.0:
        raise ConfigError(f"extra.ema_decay must be in [0, 1) (got {s['ema_decay']})")
    if int(s["num_inference_steps"]) < 1:
        raise ConfigError(f"extra.num_inference_steps must be >= 1 (got {s['num_inference_steps']})")
    if s["tokenizer"] and not Path(s["tokenizer"]).is_file():
        raise ConfigError(f"extra.tokenizer: {s['tokenizer']} not found")
    if cfg.attn_implementation:
        raise ConfigError("--attn-implementation is an openvla setting; the openpi backend has one attention")
    return s


def _given(cfg: TrainConfig, name: str) -> bool:
    """Whether a setting differs from TrainConfig's default (was chosen for this run)."""
    import dataclasses

    return getattr(cfg, name) != {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]


#: LoRA ranks of openpi's LoRA fine-tuning variants (gemma_2b_lora, gemma_300m_lora), alpha = rank.
OPENPI_LORA_RANKS = (16, 32)


def model_config(cfg: TrainConfig, num_cameras: int, precision: str):
    """(ModelConfig, OpenpiCheckpoint or None) from the run settings; raises ConfigError.

    A preset (tiny, pi0) gets LoRA on the prefix decoder from --lora-rank / --lora-alpha. An
    openpi checkpoint directory builds the network its weights describe; its own LoRA
    adapters set ranks and places (an explicit --lora-rank must agree), otherwise LoRA goes
    where openpi's LoRA fine-tuning puts it: both decoders, attention and MLP, ranks 16 and
    32 (or --lora-rank), alpha = rank (or --lora-alpha), no LoRA dropout (or --lora-dropout).
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
    if name in PRESETS:
        weights = None
        mcfg = replace(
            PRESETS[name], **run,
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
        where = "PaliGemma/llm/layers/.../lora_a"
        if not cfg.use_lora:
            raise ConfigError(f"--model {name}: the checkpoint carries LoRA adapters ({where}, rank "
                              f"{'/'.join(map(str, sorted(ranks)))}); train them with LoRA (drop --no-use-lora)")
        if _given(cfg, "lora_rank") and ranks != {int(cfg.lora_rank)}:
            raise ConfigError(f"--lora-rank {cfg.lora_rank}: the checkpoint's LoRA adapters ({where}) have rank "
                              f"{'/'.join(map(str, sorted(ranks)))}; leave --lora-rank out")
        p_rank, e_rank = mcfg.lora_rank, mcfg.expert_lora_rank
    elif cfg.use_lora:
        p_rank, e_rank = (int(cfg.lora_rank),) * 2 if _given(cfg, "lora_rank") else OPENPI_LORA_RANKS
        mcfg = replace(mcfg, lora_groups=("attn", "ffn"))
    else:
        p_rank = e_rank = 0
    mcfg = replace(
        mcfg, lora_rank=p_rank, expert_lora_rank=e_rank,
        lora_alpha=alpha or float(p_rank or 1), expert_lora_alpha=alpha or float(e_rank or 1),
        lora_dropout=float(cfg.lora_dropout) if _given(cfg, "lora_dropout") and cfg.use_lora else 0.0,
    )
    return ckpt_dir, mcfg


def select_devices(device: str):
    import jax

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

    cfg = cfg.resolved()
    settings = backend_settings(cfg)
    pre = preflight(cfg)  # data, statistics, resume checkpoint: clear errors, nothing built yet
    data = pre.data
    devices = select_devices(cfg.device)
    if cfg.batch_size % len(devices):
        raise ConfigError(
            f"--batch-size {cfg.batch_size} cannot be split evenly over {len(devices)} devices; "
            f"use a multiple of {len(devices)}"
        )
    precision = _precision(cfg, devices)
    mcfg, weights_dir = model_config(cfg, len(data.cameras), precision)
    if weights_dir is not None and not settings["tokenizer"]:
        raise ConfigError(
            f"--model {weights_dir.path}: openpi weights expect PaliGemma's tokenizer; set extra.tokenizer to its "
            f"SentencePiece model (paligemma_tokenizer.model) or tokenizer.json"
        )
    if pre.resume_config is not None:
        saved = (pre.resume_config.get("openpi") or {}).get("model_config")
        if saved:
            from crane_x7_vla.backends.openpi.presets import ModelConfig

            try:
                saved = ModelConfig.from_dict(saved).to_dict()
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{pre.resume_dir}: policy_config.json openpi.model_config: {exc}") from None
        if saved and saved != mcfg.to_dict():
            diff = sorted(k for k in saved if saved[k] != mcfg.to_dict().get(k))
            raise ConfigError(f"{pre.resume_dir}: trained with other model settings ({', '.join(diff)}); resume with the same flags")
    return _Run(cfg, settings, pre, devices, mcfg, weights_dir, precision).run()


class _Run:
    def __init__(self, cfg, settings, pre, devices, mcfg, weights_dir, precision):
        self.cfg, self.settings, self.pre, self.devices = cfg, settings, pre, devices
        self.mcfg, self.weights_dir, self.precision = mcfg, weights_dir, precision
        self.data = pre.data
        self.out = Path(cfg.output_dir)

    # ---- set-up ------------------------------------------------------------------------
    def _tokenizer(self):
        from crane_x7_vla.backends.openpi.ckpt_io import TOKENIZER_FILE
        from crane_x7_vla.backends.openpi.tokenizer import PromptTokenizer

        L = self.mcfg.max_token_len
        if self.pre.resume_dir is not None:
            tok = PromptTokenizer.from_file(self.pre.resume_dir / TOKENIZER_FILE, L)
        elif self.settings["tokenizer"]:
            tok = PromptTokenizer.from_file(self.settings["tokenizer"], L)
        else:
            texts = [e.instruction for e in self.data.train + self.data.val] + [self.cfg.instruction]
            tok = PromptTokenizer.train(texts, min(int(self.settings["tokenizer_vocab"]), self.mcfg.vocab_size), L)
        if tok.vocab_size > self.mcfg.vocab_size:
            raise ConfigError(
                f"tokenizer {tok.source} has {tok.vocab_size} tokens, the model's embedding only {self.mcfg.vocab_size}"
            )
        long = sorted({e.instruction for e in self.data.train if tok.encode(e.instruction)[2]})
        if long:
            print(f"warning: {len(long)} instruction(s) exceed {L} tokens and are cut, e.g. '{long[0]}'", file=sys.stderr)
        return tok

    def _space(self):
        from crane_x7_vla.backends.openpi.transforms import ActionSpace, model_action_statistics

        if self.pre.resume_config is not None:
            stats = self.pre.resume_config["action_space"]["model_statistics"]
        else:
            stats = model_action_statistics(self.data.train, self.mcfg.action_horizon)
        return ActionSpace(self.mcfg.action_horizon, self.mcfg.action_dim, stats, self.data.statistics["proprio"])

    def policy_config(self, step: int, space) -> dict:
        cfg = self.cfg
        return ckpt.build_policy_config(
            backend="openpi",
            base_model=str(cfg.model),
            image_spec=cfg.image_spec.to_dict(),
            cameras=self.data.cameras,
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
                    "num_inference_steps": int(self.settings["num_inference_steps"]),
                    "tokenizer_file": "tokenizer.json",
                    "ema_decay": float(self.settings["ema_decay"]),
                    "precision": self.precision,
                },
            },
        )

    # ---- the run -----------------------------------------------------------------------
    def run(self) -> Path:
        import jax
        from flax import nnx
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        from crane_x7_vla.backends.openpi import ckpt_io, train_state as ts
        from crane_x7_vla.backends.openpi.batching import Batcher, stack_micro
        from crane_x7_vla.training.data import BatchStream, DataPosition, SampleIndex
        from crane_x7_vla.training.metrics import MetricsLogger

        cfg, mcfg, data = self.cfg, self.mcfg, self.data
        tokenizer = self._tokenizer()
        space = self._space()
        batcher = Batcher(space, tokenizer, data.cameras)
        accum = int(cfg.grad_accumulation_steps)

        per_epoch = SampleIndex(data.train, cfg.batch_size, cfg.seed, cfg.noop_threshold).batches_per_epoch
        total = int(cfg.max_steps) if cfg.max_steps else int(cfg.num_epochs) * max(1, per_epoch // accum)

        # model + optimizer
        freeze = dict(freeze_vision=bool(self.settings["freeze_vision"] or cfg.freeze_vision),
                      freeze_prefix=bool(self.settings["freeze_prefix"]))
        init = None
        if self.weights_dir is not None and self.pre.resume_dir is None:
            from crane_x7_vla.backends.openpi.openpi_import import import_params

            init = import_params(self.weights_dir.params())
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

        mesh = Mesh(np.array(self.devices), ("data",))
        rep = NamedSharding(mesh, P())
        batch_sh = NamedSharding(mesh, P(None, "data"))
        trainable, frozen, ema, opt_state = jax.device_put((trainable, frozen, ema, opt_state), rep)
        step_fn = jax.jit(
            ts.make_train_step(parts.graphdef, tx, mcfg, cfg.seed, float(self.settings["ema_decay"])),
            in_shardings=(rep, rep, rep, rep, batch_sh, rep),
            out_shardings=(rep, rep, rep, rep),
            donate_argnums=(0, 2, 3),
        )
        evaluator = _Evaluator(parts.graphdef, mcfg, batcher, space, data, cfg, mesh, int(self.settings["num_inference_steps"]))

        logger = MetricsLogger(
            self.out, cfg.to_dict(), use_wandb=cfg.use_wandb, wandb_project=cfg.wandb_project,
            wandb_entity=cfg.wandb_entity, run_name=cfg.experiment_name,
        )
        print(
            f"openpi: {mcfg.vision.depth}-layer vision, {mcfg.prefix.depth}-layer decoders, {n_all / 1e6:.1f}M params "
            f"({n_train / 1e6:.2f}M trained), {len(self.devices)} device(s) [{self.devices[0].platform}], "
            f"{self.precision}, horizon {mcfg.action_horizon}, {total} steps",
            file=sys.stderr,
        )
        from tqdm import tqdm

        stream = BatchStream(
            data.train, cameras=data.cameras, spec=cfg.image_spec, horizon=mcfg.action_horizon,
            batch_size=cfg.batch_size, seed=cfg.seed, start=position, num_workers=cfg.num_workers,
            prefetch=cfg.prefetch_batches, noop_threshold=cfg.noop_threshold,
        )
        bar = tqdm(total=total, initial=start_step, desc="train openpi", disable=None, file=sys.stderr)
        step = start_step
        t_log, wait_log = time.perf_counter(), 0.0
        try:
            while step < total:
                micro = [batcher.training(next(stream)[1]) for _ in range(accum)]
                batch = jax.device_put(stack_micro(micro), batch_sh)
                trainable, ema, opt_state, metrics = step_fn(trainable, frozen, ema, opt_state, batch, np.int32(step))
                step += 1
                bar.update(1)
                if step % cfg.logging_steps == 0 or step == total:
                    m = {k: float(v) for k, v in metrics.items()}
                    if not math.isfinite(m["loss"]):
                        raise FloatingPointError(
                            f"training loss became {m['loss']} at step {step}; lower --learning-rate or check the data"
                        )
                    now = time.perf_counter()
                    m.update(learning_rate=float(schedule(step - 1)), data_wait_s=stream.wait_seconds - wait_log,
                             step_time_s=(now - t_log) / max(1, cfg.logging_steps), epoch=stream.position.epoch)
                    t_log, wait_log = now, stream.wait_seconds
                    logger.log(step, m)
                    bar.set_postfix(loss=f"{m['loss']:.4f}")
                if cfg.eval_steps and step % cfg.eval_steps == 0 and step < total:
                    logger.log(step, evaluator(trainable, ema, frozen))
                if step % cfg.save_steps == 0 and step < total:
                    self._save(step, space, tokenizer, trainable, ema, frozen, opt_state, stream.position)
            logger.log(step, evaluator(trainable, ema, frozen))
            final = self._save(None, space, tokenizer, trainable, ema, frozen, opt_state, stream.position, at_step=step)
        finally:
            bar.close()
            stream.close()
            logger.close()
        return final

    def _save(self, step, space, tokenizer, trainable, ema, frozen, opt_state, position, *, at_step=None):
        """checkpoint-{step}, or checkpoint-final (step None) of the run at optimizer step `at_step`."""
        from flax import nnx

        from crane_x7_vla.backends.openpi import ckpt_io
        from crane_x7_vla.backends.openpi.train_state import merge_lora

        real_step = step if step is not None else at_step
        params = ckpt_io.deep_merge(nnx.to_pure_dict(ema), nnx.to_pure_dict(frozen))
        with ckpt.CheckpointWriter(self.out, step) as d:
            ckpt_io.save_params(d, params)
            ckpt_io.save_train_state(d, nnx.to_pure_dict(trainable), nnx.to_pure_dict(ema), opt_state)
            tokenizer.save(d / ckpt_io.TOKENIZER_FILE)
            config = self.policy_config(real_step, space)
            ckpt.write_policy_config(d, config)
            ckpt.write_trainer_state(d, {"step": real_step, "data_position": position.to_dict(),
                                         "backend": "openpi", "seed": self.cfg.seed})
            if step is None and self.cfg.merge_lora and self.mcfg.has_lora:
                merged = merge_lora(ckpt_io.flat_paths(params), self.mcfg)
                m = d / "merged"
                m.mkdir()
                ckpt_io.save_params(m, ckpt_io.nest(merged))
                mconfig = dict(config)
                mconfig["openpi"] = dict(config["openpi"], model_config=self.mcfg.without_lora().to_dict())
                ckpt.write_policy_config(m, mconfig)
                shutil.copy(d / ckpt_io.TOKENIZER_FILE, m / ckpt_io.TOKENIZER_FILE)
        return ckpt.checkpoint_dir(self.out, step)


def _subtree(full: dict, like: dict) -> dict:
    """The part of `full` with the keys of `like` (nested dicts)."""
    return {k: _subtree(full[k], v) if isinstance(v, dict) else full[k] for k, v in like.items()}


class _Evaluator:
    """Validation: flow-matching loss (fixed noise) and L1 error of sampled absolute actions (rad)."""

    def __init__(self, graphdef, mcfg, batcher, space, data, cfg, mesh, num_steps):
        import jax

        from crane_x7_vla.backends.openpi import train_state as ts

        self.batcher, self.space, self.data, self.cfg, self.mcfg = batcher, space, data, cfg, mcfg
        self.n_dev = mesh.devices.size
        self.loss = jax.jit(ts.make_eval_loss(graphdef, mcfg))
        self.sample = jax.jit(ts.make_sampler(graphdef, num_steps))

    def _split(self, episodes, prefix, trainable, ema, frozen):
        import jax

        from crane_x7_vla.training.data import eval_batches

        if not episodes:
            return {}
        losses, l1 = [], []
        bs = max(self.n_dev, self.cfg.batch_size // max(1, self.n_dev) * self.n_dev)
        for i, b in enumerate(eval_batches(episodes, self.data.cameras, self.cfg.image_spec, self.mcfg.action_horizon,
                                           bs, self.cfg.eval_samples)):
            mb = self.batcher.training(b)
            key = jax.random.key(1000 + i)
            losses.append(float(self.loss(trainable, frozen, mb, key)))
            obs = {k: v for k, v in mb.items() if k != "actions"}
            pred = self.space.decode_actions(np.asarray(self.sample(obs, key, ema, frozen)), b["state"])
            l1.append(np.abs(pred - b["actions"]).mean(axis=(1, 2)))
        return {f"{prefix}_loss": float(np.mean(losses)), f"{prefix}_l1": float(np.concatenate(l1).mean())}

    def __call__(self, trainable, ema, frozen) -> dict:
        out = self._split(self.data.train, "train_eval", trainable, ema, frozen)
        out.update(self._split(self.data.val, "val", trainable, ema, frozen))
        return out
