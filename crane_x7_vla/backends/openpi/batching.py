"""Numpy batches of `training.data` -> the arrays the network takes (same code at deployment)."""

from __future__ import annotations

import numpy as np

from crane_x7_vla.backends.openpi.tokenizer import PromptTokenizer
from crane_x7_vla.backends.openpi.transforms import ActionSpace


class Batcher:
    """slots: a camera name (or None) per image slot of the model (openpi's three); empty
    slots get a black picture and image_mask False. None: one slot per camera, no mask."""

    def __init__(self, space: ActionSpace, tokenizer: PromptTokenizer, cameras: list[str], slots=None):
        self.space, self.tokenizer, self.cameras = space, tokenizer, list(cameras)
        self.slots = None if slots is None else list(slots)
        self._tokens: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def tokens(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        if text not in self._tokens:
            ids, mask, _ = self.tokenizer.encode(text)
            self._tokens[text] = (ids, mask)
        return self._tokens[text]

    def observation(self, images: dict, states: np.ndarray, instructions: list[str]) -> dict:
        """images {camera: uint8 (B, H, W, 3)} already prepared; states (B, 8) absolute."""
        missing = [c for c in self.cameras if c not in images]
        if missing:
            raise KeyError(f"observation lacks camera(s) {missing} (the policy uses {self.cameras})")
        toks = [self.tokens(t) for t in instructions]
        out = {
            "tokens": np.stack([t[0] for t in toks]),
            "token_mask": np.stack([t[1] for t in toks]),
            "state": self.space.encode_state(np.asarray(states, np.float64)),
        }
        if self.slots is None:
            out["images"] = np.stack([np.asarray(images[c], np.uint8) for c in self.cameras], axis=1)
            return out
        like = np.asarray(images[next(c for c in self.slots if c is not None)], np.uint8)
        out["images"] = np.stack([np.zeros_like(like) if c is None else np.asarray(images[c], np.uint8)
                                  for c in self.slots], axis=1)
        out["image_mask"] = np.repeat(np.array([[c is not None for c in self.slots]]), len(like), axis=0)
        return out

    def training(self, batch: dict) -> dict:
        """A `training.data` batch -> model inputs including normalised model-space actions."""
        out = self.observation(batch["images"], batch["state"], batch["instruction"])
        out["actions"] = self.space.training_actions(batch["actions"], batch["state"], batch.get("goal"))
        if self.space.goal_dims is not None:  # goal scenes teach the goal point only
            out["action_weight"] = (~np.asarray(batch["goal_only"], bool)).astype(np.float32)
        return out


def stack_micro(batches: list[dict]) -> dict:
    """Micro-batches -> one dict with a leading micro-batch axis (gradient accumulation)."""
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}
