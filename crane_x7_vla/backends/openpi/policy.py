"""Deployment: `load(checkpoint_dir, config, device)` -> a policy with `predict(observation)`.

predict() runs the same preprocessing as training (preprocess.prepare_image with the
checkpoint's ImageSpec, the same tokenizer and normalisation), samples an action chunk
with a fixed number of Euler steps (one compiled program; the prefix KV is computed
once per call), turns model-space actions back into ABSOLUTE joint targets (arm deltas
+ current state, gripper absolute, unnormalised) and clamps them to the joint limits.
A non-finite result raises instead of reaching the robot.

Real-time chunking (docs/fast_actions.md): an observation may carry `committed_actions`
(K, 8), the absolute targets the robot will be commanded at the new chunk's steps 1..K (the
plan it is executing), and `delay_steps` d, how many of them run before the new chunk can
arrive. The chunk is then sampled guided towards them (model.sample_actions): weight 1 on
the first d steps, decaying over the rest of the overlap (`guidance_weights`), 0 after it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crane_x7_vla import robot
from crane_x7_vla.checkpoint_contract import config_path
from crane_x7_vla.preprocess import ImageSpec, prepare_image


class PolicyError(ValueError):
    pass


def guidance_weights(horizon: int, overlap: int, delay_steps: int) -> np.ndarray:
    """(horizon,) weights of real-time chunking's guide: 1 on the first `delay_steps` steps
    (executed before the chunk arrives), then decaying as c * (e^c - 1) / (e - 1) with c going
    from 1 towards 0 over the rest of the `overlap` steps the guide covers, 0 after them."""
    overlap = int(np.clip(overlap, 0, horizon))
    d = int(np.clip(delay_steps, 0, overlap))
    w = np.zeros(horizon, np.float32)
    w[:d] = 1.0
    i = np.arange(d, overlap)
    c = (overlap - i) / (overlap - d + 1.0)
    w[d:overlap] = c * np.expm1(c) / np.expm1(1.0)
    return w


class OpenPIPolicy:
    def __init__(self, checkpoint_dir: Path, config: dict, device: str | None = None, seed: int = 0):
        import jax
        from crane_x7_vla.backends.openpi import ckpt_io, train_state as ts
        from crane_x7_vla.backends.openpi.batching import Batcher
        from crane_x7_vla.backends.openpi.conventions import Conventions
        from crane_x7_vla.backends.openpi.presets import ModelConfig
        from crane_x7_vla.backends.openpi.tokenizer import PromptTokenizer
        from crane_x7_vla.backends.openpi.transforms import ActionSpace

        where = config_path(checkpoint_dir)
        block = config.get("openpi")
        if not isinstance(block, dict) or "model_config" not in block:
            raise PolicyError(f"{where}: the 'openpi' entry (model_config) is missing; not an OpenPI checkpoint")
        self.config = config
        self.checkpoint_dir = Path(checkpoint_dir)
        try:
            self.model_config = ModelConfig.from_dict(block["model_config"])
            self.conventions = Conventions.from_dict(block.get("conventions"), f"{where}: openpi.conventions")
            self.space = ActionSpace.from_config(config)
            self.spec = ImageSpec.from_dict(config["image_spec"])
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"{where}: {exc}") from None
        self.cameras = list(config["cameras"])
        self.default_instruction = config.get("default_instruction") or ""
        self.num_steps = int(block.get("num_inference_steps", 10))
        tok_path = block.get("tokenizer_path") or self.checkpoint_dir / block.get(
            "tokenizer_file", ckpt_io.TOKENIZER_FILE
        )
        try:
            tok = PromptTokenizer.from_file(tok_path, self.model_config.max_token_len, self.conventions.prompt)
        except ValueError as exc:
            raise PolicyError(f"tokenizer {tok_path}: {exc}") from None
        self.batcher = Batcher(self.space, tok, self.cameras, slots=self.conventions.image_slots)
        self.device = _device(device)

        graphdef, abstract = ts.abstract_model(self.model_config)
        if block.get("layout") == "openpi":  # an openpi directory served as it is (served.py)
            from crane_x7_vla.backends.openpi.openpi_import import (
                OpenpiCheckpoint,
                OpenpiCheckpointError,
                import_params,
            )

            params_dir = Path(block.get("params_dir") or self.checkpoint_dir / "params")
            try:
                restored = ckpt_io.nest(import_params(OpenpiCheckpoint(params_dir.parent).params()))
            except OpenpiCheckpointError as exc:
                raise PolicyError(f"{params_dir}: {exc}") from None
        else:
            params_dir = self.checkpoint_dir / ckpt_io.PARAMS_DIR
            restored = ckpt_io.restore_numpy(params_dir)
        try:
            state = ckpt_io.fill_state(abstract, restored, str(params_dir))
        except ValueError as exc:
            raise PolicyError(str(exc)) from None
        self.params = jax.device_put(state, self.device)
        sampler = ts.make_sampler(graphdef, self.num_steps)
        self._sample = jax.jit(sampler)
        num_steps = self.num_steps

        def guided(obs, key, guide, weights, *states):
            from flax import nnx

            model = nnx.merge(graphdef, *states)
            return model.sample_actions(key, obs, num_steps=num_steps, guide=guide, guide_weights=weights)

        self._sample_guided = jax.jit(guided)
        self.last_guidance: dict | None = None  # the guide of the latest guided call (model space)
        self._key = ts.prng_key(seed)
        self._calls = 0

    @property
    def metadata(self) -> dict:
        return {
            "backend": "openpi",
            "base_model": self.config.get("base_model"),
            "action_horizon": self.space.horizon,
            "action_dim": len(self.space.mask),
            "cameras": self.cameras,
            "image_size": [self.spec.width, self.spec.height],
            "joint_names": list(self.config["joint_names"]),
            "control_rate_hz": self.config.get("control_rate_hz"),
            "num_inference_steps": self.num_steps,
            "step": self.config.get("step"),
        }

    def reset(self) -> None:
        """Start the noise draws again (at each episode's start): the same observations give
        the same chunks in every episode, and a warm-up call leaves no trace."""
        self._calls = 0

    def predict(self, observation: dict) -> np.ndarray:
        import jax

        images = observation.get("images") or {}
        missing = [c for c in self.cameras if c not in images]
        if missing:
            raise PolicyError(f"observation lacks image(s) from camera(s) {missing}; the policy uses {self.cameras}")
        state = np.asarray(observation.get("state"), np.float64).reshape(-1)
        if state.shape != (len(self.space.mask),) or not np.all(np.isfinite(state)):
            raise PolicyError(
                f"observation 'state' must hold {len(self.space.mask)} finite joint positions (got {state})"
            )
        instruction = observation.get("instruction") or self.default_instruction
        prepared = {c: prepare_image(images[c], self.spec, train=False)[None] for c in self.cameras}
        obs = self.batcher.observation(prepared, state[None], [instruction])
        key = jax.random.fold_in(self._key, self._calls)
        self._calls += 1
        guide = self._guide(observation, state)
        if guide is None:
            out = np.asarray(self._sample(jax.device_put(obs, self.device), key, self.params))[0]
        else:
            out = np.asarray(self._sample_guided(jax.device_put(obs, self.device), key, *guide, self.params))[0]
        actions = self.space.decode_actions(out, state)
        if not np.all(np.isfinite(actions)):
            raise PolicyError("the model produced non-finite actions; refusing to send them to the robot")
        return robot.clamp_to_limits(actions)


    supports_guidance = True  # predict() takes committed_actions / delay_steps (real-time chunking)

    def _guide(self, observation: dict, state: np.ndarray):
        """(guide, weights), each (1, H, padded_dim) in model space, from the observation's
        committed_actions and delay_steps; None when it has none."""
        committed = observation.get("committed_actions")
        if committed is None:
            self.last_guidance = None
            return None
        committed = np.asarray(committed, np.float64)
        n = len(self.space.mask)
        if committed.ndim != 2 or committed.shape[1] != n or not np.all(np.isfinite(committed)):
            raise PolicyError(f"observation 'committed_actions' must be (K, {n}) finite joint targets "
                              f"(got shape {committed.shape})")
        delay = observation.get("delay_steps", 0)
        if not isinstance(delay, (int, np.integer)) or delay < 0:
            raise PolicyError(f"observation 'delay_steps' must be a whole number >= 0 (got {delay!r})")
        h = self.space.horizon
        committed = committed[:h]
        guide = np.zeros((h, self.space.padded_dim), np.float32)
        guide[: len(committed)] = self.space.encode_actions(committed, state)
        dims = np.zeros(self.space.padded_dim, np.float32)
        dims[list(self.space.action_dims) if self.space.action_dims is not None else slice(0, n)] = 1.0
        weights = guidance_weights(h, len(committed), int(delay))[:, None] * dims[None]
        self.last_guidance = {"guide": guide, "weights": weights}
        return guide[None], weights[None]


def _device(device: str | None):
    import jax

    if device in (None, "auto"):
        return jax.devices()[0]
    if device == "cpu":
        return jax.devices("cpu")[0]
    if str(device).startswith("cuda"):
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            raise PolicyError(f"device '{device}': JAX sees no GPU") from None
        try:
            index = int(str(device).split(":", 1)[1]) if ":" in str(device) else 0
        except ValueError:
            raise PolicyError(f"device must be auto, cpu, cuda or cuda:N (got '{device}')") from None
        if index >= len(gpus):
            raise PolicyError(f"device '{device}': only {len(gpus)} GPU(s) visible")
        return gpus[index]
    raise PolicyError(f"device must be auto, cpu, cuda or cuda:N (got '{device}')")


def load(checkpoint_dir, config: dict, device: str | None = None) -> OpenPIPolicy:
    """The policy of an OpenPI checkpoint; a checkpoint or device it cannot use is a CheckpointError
    (one line, which load_policy passes on)."""
    from crane_x7_vla.checkpoint_contract import CheckpointError

    try:
        return OpenPIPolicy(Path(checkpoint_dir), config, device)
    except PolicyError as exc:
        raise CheckpointError(str(exc)) from None
