"""The OpenVLA model's inputs from a batch of `training.data` or an observation: the one
builder the trainer, its validation and the policy share.

Pictures become `pixel_values` (the cameras in checkpoint order); instructions, the state
tokens and the written tokens (goal and actions) become the prompt batch of
`model.build_batch`, with labels for training or up to the first written token for decoding.
"""

from __future__ import annotations

import numpy as np
import torch

from crane_x7_vla.backends.openvla.action_tokenizer import ActionCodec
from crane_x7_vla.backends.openvla.model import IGNORE, VLA, build_batch, pixel_values
from crane_x7_vla.preprocess import to_absolute, to_delta


def label_ids(codec: ActionCodec, batch: dict) -> list[np.ndarray]:
    """The tokens each sample is trained to write: goal (with goal tokens) and actions, or the
    goal alone for a picture without a demonstration (batch['goal_only'])."""
    ids = codec.encode(batch["actions"], batch["state"], batch["goal"] if codec.n_goal else None)
    only = batch.get("goal_only")
    return [row[: codec.n_goal] if only is not None and only[i] else row for i, row in enumerate(ids)]


def stops(batch: dict) -> list[bool]:
    """Which samples end with a labelled end-of-sequence token: those with actions (as OpenVLA
    trains its `</s>`), not a picture that teaches the goal alone (batch['goal_only'])."""
    only = batch.get("goal_only")
    return [not (only is not None and only[i]) for i in range(len(batch["instruction"]))]


def normalized_actions(codec: ActionCodec, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Absolute targets (B, H, 8) + state (B, 8) -> what the parallel head regresses: the values
    the token head bins (the codec's representation, normalised, clipped to [-1, 1]), unbinned."""
    chunk = np.asarray(actions)
    chunk = chunk[:, None] if chunk.ndim == 2 else chunk
    return np.clip(codec.tokens.normalize(to_delta(chunk, state, codec.mask)), -1.0, 1.0)


def absolute_actions(codec: ActionCodec, values: np.ndarray, state: np.ndarray) -> np.ndarray:
    """normalized_actions' inverse: (B, H, 8) values (clipped to [-1, 1]) + state -> absolute targets."""
    values = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0)
    return to_absolute(codec.tokens.unnormalize(values), state, codec.mask)


class ModelInputs:
    """Model inputs of one model, action codec, camera list and device."""

    def __init__(self, vla: VLA, codec: ActionCodec, cameras: list[str], device):
        self.vla, self.codec, self.cameras, self.device = vla, codec, list(cameras), device

    def pixels(self, images: dict[str, np.ndarray]) -> torch.Tensor:
        """{camera: uint8 (B, H, W, 3)} prepared at the model's size -> pixel_values."""
        return pixel_values(self.vla, images, self.cameras, self.device)

    def training(self, batch: dict) -> tuple[dict, torch.Tensor]:
        """(prompt batch with labels on the written tokens, pixel_values) of a training batch."""
        pix = self.pixels(batch["images"])
        inputs = build_batch(
            self.vla,
            batch["instruction"],
            label_ids(self.codec, batch),
            self.device,
            self.codec.state_ids(batch["state"]),
            goal_first=self.codec.goal_first,
            stop=stops(batch),
        )
        return inputs, pix

    def prompts(self, instructions: list[str], state: np.ndarray) -> dict:
        """The prompts to decode from (no labels): everything before the first written token,
        and `middle_ids` to feed after the goal when the goal comes before the state."""
        batch = build_batch(
            self.vla, instructions, None, self.device, self.codec.state_ids(state), goal_first=self.codec.goal_first
        )
        batch.pop("labels")
        return batch

    def parallel(self, instructions: list[str], state: np.ndarray, n_positions: int) -> dict:
        """The prompts followed by `n_positions` placeholder ids (the parallel head's query
        positions, whose embeddings it replaces), right-padded, and `action_mask` marking them."""
        pad = self.vla.tokenizer.pad_token_id
        placeholders = np.full((len(instructions), n_positions), pad, dtype=np.int64)
        batch = build_batch(self.vla, instructions, placeholders, self.device, self.codec.state_ids(state))
        batch["action_mask"] = batch.pop("labels") != IGNORE
        return batch
