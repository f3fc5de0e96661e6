"""The pretraining stage of the OpenPI backend's tiny preset: learn to find named objects.

π0 starts from PaliGemma, a vision-language model that can already say where things are; the
tiny preset starts from random weights and, trained only on demonstrations, drives to the
middle of the workspace whichever cube is named. This stage gives it that grounding in
miniature, on the same rendered scenes as the OpenVLA backend's stage (sim/pointing.py):

1. vision: the image encoder, with a read-out that is dropped afterwards (a learned query per
   question attends over the encoder's patch tokens), regresses where "the {colour} {object}"
   is in the picture;
2. answers (optional, `answer_steps`): the whole model answers "point to the {colour}
   {object}" through the path actions take, the question as the prompt and the answer as an
   action chunk that holds the picture position in the first two of the goal point's
   dimensions (`train --goal-dims`), nothing else learned (flow matching, the fine-tuning step
   function, the image encoder kept as stage 1 left it). The action expert learns to look up
   the named object among the image tokens, which reaching needs, and fine-tuning with
   `--goal-dims` continues from that answer.

The result is a model directory (`params/` as a checkpoint stores them, the prompt tokenizer,
pretraining.json naming the preset) that `train --backend openpi --model DIR` fine-tunes.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from crane_x7_vla.backends.openpi import ckpt_io
from crane_x7_vla.backends.openpi import train_state as ts
from crane_x7_vla.backends.openpi.base_model import MARKER
from crane_x7_vla.backends.openpi.model import Dense
from crane_x7_vla.backends.openpi.presets import PRESETS
from crane_x7_vla.backends.openpi.tokenizer import PromptTokenizer
from crane_x7_vla.backends.openpi.transforms import GOAL_DIMS
from crane_x7_vla.errors import ConfigError
from crane_x7_vla.preprocess import ImageSpec
from crane_x7_vla.sim.pointing import PRETRAIN_FIRST_SEED, Scenes, check_stage_settings, render_scenes

#: Action chunk of the answer stage (the network has no horizon-sized weights: fine-tuning may use another).
ANSWER_HORIZON = 4
#: Where the answer (picture position u, v) is written: the first two goal dimensions of `train --goal-dims`.
ANSWER_DIMS = GOAL_DIMS[:2]


def instructions(task: str) -> list[str]:
    """Every instruction the simulated task can give (the tokenizer must know their words)."""
    from crane_x7_vla.sim.tasks import COLOUR_NAMES, get_task

    spec = get_task(task)
    return sorted({spec.template.format(cube=c, plate=p) for c in COLOUR_NAMES for p in COLOUR_NAMES})


class PointingHead(nnx.Module):
    """Stage 1 read-out: a learned query per question scores every patch token, and the answer
    is the score-weighted mean of the patch centres moved by an offset each token predicts
    within its patch (a soft arg-max over the picture's grid). The encoder learns to make the
    named object's patches stand out, which is the grounding the policy needs."""

    def __init__(self, n_questions: int, width: int, grid: tuple[int, int], rngs: nnx.Rngs):
        rows, cols = grid
        self.query = nnx.Param(jax.random.normal(rngs.params(), (n_questions, width)) * width**-0.5)
        self.key = Dense(width, width, rngs)
        self.offset = Dense(width, 2, rngs)
        v, u = np.meshgrid((np.arange(rows) + 0.5) / rows * 2 - 1, (np.arange(cols) + 0.5) / cols * 2 - 1,
                           indexing="ij")
        self.centres = nnx.Variable(jnp.asarray(np.stack([u.ravel(), v.ravel()], -1), jnp.float32))
        self.half_cell = nnx.Variable(jnp.asarray([1.0 / cols, 1.0 / rows], jnp.float32))

    def __call__(self, tokens: jax.Array, question_ids: jax.Array) -> jax.Array:
        q = self.query[...][question_ids]  # (B, D)
        scores = jnp.einsum("bd,bnd->bn", q, self.key(tokens))
        where = self.centres[...] + jnp.tanh(self.offset(tokens)) * self.half_cell[...]  # (B, N, 2)
        return jnp.einsum("bn,bnc->bc", jax.nn.softmax(scores, axis=-1), where)


class _Stage1(nnx.Module):
    def __init__(self, vision, head):
        self.vision = vision
        self.head = head

    def __call__(self, images, question_ids):
        pix = images.astype(jnp.float32) / 127.5 - 1.0
        return self.head(self.vision(pix, jnp.float32), question_ids)


def _cosine(peak: float, steps: int):
    warmup = max(1, steps // 10)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                 optax.cosine_decay_schedule(peak, max(1, steps - warmup))], [warmup])


def vision_stage(model, data: Scenes, test: Scenes, *, steps: int, batch_size: int, learning_rate: float,
                 rng: np.random.Generator, seed: int) -> float:
    """Train model.vision with a pointing read-out; returns the held-out error in pixels."""
    from tqdm import tqdm

    names = sorted(set(data.text) | set(test.text))
    ids = {n: i for i, n in enumerate(names)}
    p = model.cfg.vision.patch_size
    grid = (model.cfg.image_height // p, model.cfg.image_width // p)
    stage = _Stage1(model.vision, PointingHead(len(names), model.cfg.prefix.width, grid, nnx.Rngs(params=seed + 1)))
    graphdef, state = nnx.split(stage)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(_cosine(learning_rate, steps), weight_decay=0.0))
    opt = tx.init(state)

    @jax.jit
    def step(state, opt, images, qid, where):
        def loss_fn(s):
            return jnp.mean(jnp.square(nnx.merge(graphdef, s)(images, qid) - where))

        loss, grads = jax.value_and_grad(loss_fn)(state)
        updates, opt = tx.update(grads, opt, state)
        return optax.apply_updates(state, updates), opt, loss

    @jax.jit
    def predict(state, images, qid):
        return nnx.merge(graphdef, state)(images, qid)

    def batch(part: Scenes, rows):
        return (part.images[part.scene[rows]], np.array([ids[part.text[i]] for i in rows], np.int32),
                part.where[rows])

    bar = tqdm(range(steps), desc="pretrain vision", unit="step", mininterval=2.0)
    for _ in bar:
        state, opt, loss = step(state, opt, *batch(data, rng.integers(len(data.text), size=batch_size)))
        bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
    nnx.update(stage, state)  # model.vision is the same module: it keeps the trained weights
    got = [np.asarray(predict(state, *batch(test, np.arange(i, min(i + 128, len(test.text))))[:2]))
           for i in range(0, len(test.text), 128)]
    return _pixels(np.concatenate(got), test.where, model.cfg)


def _pixels(got: np.ndarray, where: np.ndarray, cfg) -> float:
    scale = np.array([cfg.image_width, cfg.image_height], np.float32) / 2.0
    return float(np.linalg.norm((got - where) * scale, axis=1).mean())


def answer_stage(model, data: Scenes, test: Scenes, tokenizer: PromptTokenizer, *, steps: int, batch_size: int,
                 learning_rate: float, rng: np.random.Generator, seed: int):
    """The whole model (image encoder frozen) answers the questions as an action chunk whose
    ANSWER_DIMS hold the object's picture position; returns (model, held-out pixels)."""
    from tqdm import tqdm

    cfg = model.cfg
    graphdef, trainable, frozen = nnx.split(model, ts.trainable_filter(cfg, freeze_vision=True), ...)
    tx = ts.optimizer(_cosine(learning_rate, steps), weight_decay=0.0, max_grad_norm=1.0)
    opt = tx.init(trainable)
    train_step = jax.jit(ts.make_train_step(graphdef, tx, cfg, seed, ema_decay=0.0, extra_dims=ANSWER_DIMS))
    sample = jax.jit(ts.make_sampler(graphdef, num_steps=10))
    encoded = {t: tokenizer.encode(t)[:2] for t in set(data.text) | set(test.text)}

    def batch(part: Scenes, rows) -> dict:
        n = len(rows)
        actions = np.zeros((n, cfg.action_horizon, cfg.action_dim), np.float32)
        actions[:, :, list(ANSWER_DIMS)] = part.where[rows][:, None, :]
        return {"action_weight": np.zeros(n, np.float32),  # no robot action: the answer dimensions alone
                "images": part.images[part.scene[rows]][:, None], "tokens": np.stack([encoded[part.text[i]][0]
                                                                                     for i in rows]),
                "token_mask": np.stack([encoded[part.text[i]][1] for i in rows]),
                "state": np.zeros((n, cfg.action_dim), np.float32), "actions": actions}

    ema = jax.tree.map(lambda x: x.copy(), trainable)
    bar = tqdm(range(steps), desc="pretrain answers", unit="step", mininterval=2.0)
    for k in bar:
        micro = jax.tree.map(lambda x: x[None], batch(data, rng.integers(len(data.text), size=batch_size)))
        trainable, ema, opt, metrics = train_step(trainable, frozen, ema, opt, micro, k)
        bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", refresh=False)
    key = ts.prng_key(seed + 2)
    got = []
    for i in range(0, len(test.text), 128):
        obs = batch(test, np.arange(i, min(i + 128, len(test.text))))
        answer = np.asarray(sample(obs, jax.random.fold_in(key, i), trainable, frozen))[:, :, list(ANSWER_DIMS)]
        got.append(answer.mean(axis=1))
    return nnx.merge(graphdef, trainable, frozen), _pixels(np.concatenate(got), test.where, cfg)


def pretrain_tiny(dest, *, preset: str = "tiny", image_size=(64, 64), task: str = "reach", scenes: int = 3000,
                  steps: int = 1500, answer_steps: int = 0, batch_size: int = 32, learning_rate: float = 3e-4,
                  answer_learning_rate: float = 3e-4, seed: int = 0, held_out: int = 200, log=print) -> dict:
    """Build `preset` at `image_size`, pretrain its image encoder (`steps`) and then, with
    `answer_steps`, the whole model to answer pointing questions, on rendered scenes of `task`;
    save it to `dest`. Returns the figures, also written to dest/pretraining.json."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r} is not an openpi preset (presets: {', '.join(PRESETS)})")
    check_stage_settings(task, scenes=(scenes, 1), steps=(steps, 1), answer_steps=(answer_steps, 0),
                         batch_size=(batch_size, 1), held_out=(held_out, 1))
    cfg = replace(PRESETS[preset], image_width=int(image_size[0]), image_height=int(image_size[1]),
                  num_cameras=1, action_horizon=ANSWER_HORIZON, lora_rank=0, expert_lora_rank=0, dtype="float32")
    try:
        cfg.validate()
    except ValueError as exc:
        raise ConfigError(f"--image-size: {exc}") from None
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"--out {dest}: exists and is not empty")
    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    first = PRETRAIN_FIRST_SEED + seed * 1_000_000
    data = render_scenes(task, scenes, first, ImageSpec(cfg.image_width, cfg.image_height, 1.0, 0.1), rng)
    test = render_scenes(task, held_out, first + scenes, ImageSpec(cfg.image_width, cfg.image_height, 1.0, 0.0), rng)
    log(f"rendered {scenes} + {held_out} held-out scenes of '{task}' ({len(data.text)} questions) "
        f"in {time.monotonic() - t0:.0f} s")
    tokenizer = PromptTokenizer.train(sorted(set(data.text) | set(test.text)) + instructions(task),
                                      cfg.vocab_size, cfg.max_token_len)
    model = ts.init_model(cfg, seed)
    figures = {"backend": "openpi", "preset": preset, "task": task, "scenes": scenes, "questions": len(data.text),
               "steps": steps, "held_out_questions": len(test.text), "image_size": [cfg.image_width, cfg.image_height]}
    error = vision_stage(model, data, test, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                         rng=rng, seed=seed)
    figures["held_out_error_pixels"] = round(error, 3)
    log(f"image encoder: held-out pointing error {error:.2f} pixels of the {cfg.image_width}x{cfg.image_height} "
        f"picture ({len(test.text)} questions)")
    figures["answer_steps"] = answer_steps
    if answer_steps:
        model, answer = answer_stage(model, data, test, tokenizer, steps=answer_steps, batch_size=batch_size,
                                     learning_rate=answer_learning_rate, rng=rng, seed=seed)
        figures["held_out_answer_error_pixels"] = round(answer, 3)
        log(f"answers through the action expert: held-out error {answer:.2f} pixels")
    dest.mkdir(parents=True, exist_ok=True)
    ckpt_io.save_params(dest, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    tokenizer.save(dest / ckpt_io.TOKENIZER_FILE)
    figures["model_config"] = cfg.to_dict()
    figures["seconds"] = round(time.monotonic() - t0, 1)
    (dest / MARKER).write_text(json.dumps(figures, indent=2))
    log(f"base model saved in {dest}")
    return figures
