"""A trained OpenVLA checkpoint as a policy: observation -> (H, 8) absolute joint targets
(H = 1 as OpenVLA; a chunk of H steps when trained with --action-horizon H).

Uses the training code's own pieces: `preprocess.prepare_image(train=False)` (centre crop),
the prompt (with the state tokens when the checkpoint was trained with them), the
`ActionCodec` built from the checkpoint's action space and statistics (deltas are turned
back into absolute targets with the observed state), and greedy decoding of exactly 8 * H
tokens restricted to the action tokens, or, for a checkpoint trained with
`--action-head parallel-l1`, the whole chunk from one forward pass of the model with its
parallel action head (`action_head.safetensors`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from crane_x7_vla import robot
from crane_x7_vla.backends.openvla import decode
from crane_x7_vla.backends.openvla.action_tokenizer import ActionCodec
from crane_x7_vla.backends.openvla.inputs import ModelInputs
from crane_x7_vla.backends.openvla.model import (ACTION_HEADS, PARALLEL_L1, TOKEN_HEAD, ParallelDecoder, apply_adapter,
                                                 checkpoint_model_source, load_action_head, load_vla,
                                                 set_image_position, torch_device)
from crane_x7_vla.backends.openvla.prismatic import openvla_image
from crane_x7_vla.backends.openvla.prompt import IMAGE_FIRST
from crane_x7_vla.backends.openvla.published import stop_ids
from crane_x7_vla.preprocess import ABSOLUTE, ImageSpec, prepare_image
from crane_x7_vla.checkpoint_contract import CheckpointError, config_path


class OpenVLAPolicy:
    def __init__(self, checkpoint_dir, config: dict, device=None, cpu_threads: int = 0):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.config = config
        self.device = torch_device(device)
        if cpu_threads > 0:
            # torch's thread pool is per process: beside a busy simulator one thread answers
            # faster than two that wait for each other (bench/inference_threads.py)
            torch.set_num_threads(cpu_threads)
        self.spec = ImageSpec.from_dict(config["image_spec"])
        self.cameras = list(config["cameras"])
        self.horizon = int(config["action_space"].get("horizon", 1))
        if self.horizon < 1:
            raise CheckpointError(f"{checkpoint_dir}: action_space.horizon must be >= 1 (found {self.horizon})")
        info = config.get("openvla", {})
        d = self.checkpoint_dir
        # a model folder in OpenVLA's published layout, served as it is (published.py)
        self.published = info.get("layout") == "published"
        source = str(d) if self.published else checkpoint_model_source(d, config)[0]
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.vla = load_vla(source, image_size=(self.spec.width, self.spec.height), dtype=dtype, device=self.device)
        if not self.published and not (d / "model").is_dir():  # checkpoint_model_source made sure adapter/ is there
            self.vla.model = apply_adapter(self.vla.model, d / "adapter")
        self.vla.model.eval()
        # a published folder is decoded as OpenVLA's generate does: it stops at `</s>`
        self.stop_ids = stop_ids(d, self.vla.model.config.text_config) if self.published else ()
        self.vla.num_cameras = len(self.cameras)
        try:
            set_image_position(self.vla, info.get("image_position", IMAGE_FIRST))
        except ValueError as exc:
            raise CheckpointError(f"{config_path(d)}: openvla.image_position: {exc}") from None
        if info.get("vocab_size") not in (None, self.vla.vocab_size):
            raise CheckpointError(
                f"{d}: trained with a vocabulary of {info['vocab_size']} tokens, the loaded tokenizer has "
                f"{self.vla.vocab_size}; the base model '{source}' is not the one it was trained on"
            )
        try:
            self.codec = ActionCodec.from_policy_config(self.vla.vocab_size, config, where=str(config_path(d)))
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        self.inputs = ModelInputs(self.vla, self.codec, self.cameras, self.device)
        self.action_head = info.get("action_head", TOKEN_HEAD)
        if self.action_head not in ACTION_HEADS:
            raise CheckpointError(f"{config_path(d)}: openvla.action_head '{self.action_head}' is unknown "
                                  f"(known: {', '.join(ACTION_HEADS)})")
        self.decoder = None
        if self.action_head == PARALLEL_L1:
            head = load_action_head(d, info.get("parallel_head") or {}, self.device)
            if head.horizon != self.horizon:
                raise CheckpointError(f"{config_path(d)}: openvla.parallel_head.horizon {head.horizon} differs from "
                                      f"action_space.horizon {self.horizon}")
            self.decoder = ParallelDecoder(self.vla.model, head).eval()
        self.needs_state = self.codec.state_in_prompt or self.codec.representation != ABSOLUTE
        self.last_goal: np.ndarray | None = None
        self.last_ids: np.ndarray | None = None  # the token ids of the latest prediction

    @property
    def metadata(self) -> dict:
        c = self.config
        return {
            "backend": "openvla",
            "base_model": c.get("base_model"),
            "cameras": self.cameras,
            "image_size": [self.spec.width, self.spec.height],
            "action_dim": robot.ACTION_DIM,
            "action_horizon": self.horizon,
            "action_head": self.action_head,
            "action_representation": self.codec.representation,
            "state_in_prompt": self.codec.state_in_prompt,
            "goal_tokens": self.codec.n_goal > 0,
            "goal_before_state": self.codec.goal_before_state,
            "joint_names": list(c["joint_names"]),
            "control_rate_hz": c.get("control_rate_hz"),
            "default_instruction": c.get("default_instruction"),
            "step": c.get("step"),
            "statistics_fingerprint": c.get("statistics_fingerprint"),
        }

    @torch.no_grad()
    def predict(self, observation: dict) -> np.ndarray:
        images = observation.get("images") or {}
        missing = [c for c in self.cameras if c not in images]
        if missing:
            raise KeyError(f"observation lacks image(s) from camera(s) {missing}; the policy needs {self.cameras}")
        if self.published:  # OpenVLA's own image processing: the whole picture resized, no crop
            prepared = {c: openvla_image(np.asarray(images[c]), self.vla.processing)[None] for c in self.cameras}
        else:
            prepared = {c: prepare_image(np.asarray(images[c]), self.spec, train=False)[None] for c in self.cameras}
        instruction = observation.get("instruction") or self.config.get("default_instruction") or ""
        pix = self.inputs.pixels(prepared)
        state = self._state(observation)
        if self.decoder is not None:  # the whole chunk in one forward pass
            action = decode.parallel_actions(self.decoder, self.inputs, [instruction], state, pix, self.horizon)[0]
            self.last_ids, self.last_goal = None, None
            return self._finish(action)
        batch = self.inputs.prompts([instruction], state)
        n = self.codec.n_tokens(self.horizon)
        ids = decode.generate_action_ids(self.vla.model, self.vla, batch, pix, n, self.codec.first_id,
                                         middle_after=self.codec.goal_first, whole_vocabulary=self.published,
                                         stop_ids=self.stop_ids).cpu()
        if self.published:  # predict_action reads the last n ids of the prompt and what generate wrote
            ids = torch.cat([batch["input_ids"].cpu(), ids], dim=1)[:, -n:]
        ids = ids.numpy()
        self.last_ids = ids[0]
        goal = self.codec.decode_goal(ids)
        self.last_goal = None if goal is None else goal[0]  # where the model says the hand is going (m)
        action = self.codec.decode(ids, state, clip=self.published)[0]  # (H, 8) absolute targets
        return self._finish(action)

    @staticmethod
    def _finish(action: np.ndarray) -> np.ndarray:
        """(H, 8) absolute targets, checked finite and clamped to the joint limits."""
        if not np.all(np.isfinite(action)):
            raise RuntimeError(f"the policy produced a non-finite action {action}")
        return np.stack([robot.clamp_to_limits(a) for a in action]).astype(np.float64)


    def _state(self, observation: dict) -> np.ndarray:
        """The observed joint state as (1, 8); required when the checkpoint uses it."""
        state = observation.get("state")
        if state is None:
            if self.needs_state:
                raise KeyError("observation lacks 'state' (8 joint positions); this policy needs it "
                               f"(actions {self.codec.representation}, state in prompt: {self.codec.state_in_prompt})")
            return np.zeros((1, robot.ACTION_DIM))
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        if state.shape != (robot.ACTION_DIM,) or not np.all(np.isfinite(state)):
            raise ValueError(f"observation 'state' must be {robot.ACTION_DIM} finite joint positions "
                             f"({', '.join(robot.JOINT_NAMES)}), got {state.tolist()}")
        return state[None]


def load(checkpoint_dir, config: dict, device=None, cpu_threads: int = 0) -> OpenVLAPolicy:
    return OpenVLAPolicy(checkpoint_dir, config, device, cpu_threads)
