"""Actions <-> the last 256 vocabulary tokens (OpenVLA's discretisation).

Absolute joint targets are normalised to [-1, 1] with the dataset's q01/q99
(`preprocess.Normalizer`, the same code deployment uses), cut into 256 uniform bins,
and bin i is written as token id `vocab_size - 1 - i` (OpenVLA's order: the highest bin
takes the lowest id of the range). Decoding maps a token back to its bin centre.

`ActionCodec` adds the checkpoint's action representation (absolute, or arm deltas from
the current state) and the optional state tokens of the prompt.
"""

from __future__ import annotations

import numpy as np

from crane_x7_vla.preprocess import ABSOLUTE, REPRESENTATIONS, Normalizer, delta_mask, to_absolute, to_delta

N_BINS = 256


class ActionTokenizer:
    def __init__(self, vocab_size: int, normalizer: Normalizer, n_bins: int = N_BINS):
        if vocab_size <= n_bins:
            raise ValueError(f"the tokenizer's vocabulary ({vocab_size}) must be larger than {n_bins} action bins")
        self.vocab_size = int(vocab_size)
        self.n_bins = n_bins
        self.normalizer = normalizer
        self.centers = -1.0 + (np.arange(n_bins) + 0.5) * (2.0 / n_bins)

    @property
    def first_id(self) -> int:
        """Lowest token id used for actions (ids first_id .. vocab_size - 1)."""
        return self.vocab_size - self.n_bins

    def bins(self, normalized: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(normalized, dtype=np.float64), -1.0, 1.0)
        return np.clip(np.floor((x + 1.0) * 0.5 * self.n_bins), 0, self.n_bins - 1).astype(np.int64)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Robot units (..., 8) -> token ids (..., 8)."""
        return self.vocab_size - 1 - self.bins(self.normalizer.normalize(actions))

    def decode_normalized(self, token_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64)
        if np.any(ids < self.first_id) or np.any(ids >= self.vocab_size):
            raise ValueError(f"token ids outside the action range [{self.first_id}, {self.vocab_size})")
        return self.centers[self.vocab_size - 1 - ids]

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """Token ids (..., 8) -> absolute joint targets in robot units (float64)."""
        return self.normalizer.unnormalize(self.decode_normalized(token_ids))


class ActionCodec:
    """Everything between robot units and token ids for one checkpoint, used identically by
    the trainer and the policy: the action representation (absolute targets, or arm deltas
    from the current state with the gripper absolute) and, with `state_in_prompt`, the
    joint state as 8 prompt tokens (normalised with the dataset's proprio q01/q99 and cut
    into the same 256 bins as the actions)."""

    def __init__(self, vocab_size: int, statistics: dict, *, representation: str = ABSOLUTE,
                 model_statistics: dict | None = None, state_in_prompt: bool = False):
        self.representation = representation
        self.mask = delta_mask(representation)
        if representation == ABSOLUTE:
            normalizer = Normalizer.from_stats(statistics, "action")
            self.model_statistics = None
        else:
            if model_statistics is None:
                raise ValueError(f"{representation} actions need their statistics (model_statistics)")
            normalizer = Normalizer.from_stats({"action": model_statistics}, "action")
            self.model_statistics = model_statistics
        self.tokens = ActionTokenizer(vocab_size, normalizer)
        self.state_in_prompt = bool(state_in_prompt)
        self.state_tokens = ActionTokenizer(vocab_size, Normalizer.from_stats(statistics, "proprio")) \
            if self.state_in_prompt else None

    @property
    def first_id(self) -> int:
        return self.tokens.first_id

    def encode(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Absolute targets (B, 8) or a chunk (B, H, 8) + state (B, 8) -> action token ids
        (B, 8 * H), step after step (every chunk step relative to the same current state)."""
        actions = np.asarray(actions)
        chunk = actions[:, None] if actions.ndim == 2 else actions
        return self.tokens.encode(to_delta(chunk, state, self.mask)).reshape(len(chunk), -1)

    def decode(self, token_ids: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Action token ids (B, 8 * H) + state (B, 8) -> absolute targets (B, H, 8) float64."""
        ids = np.asarray(token_ids)
        values = self.tokens.decode(ids.reshape(len(ids), -1, len(self.mask)))
        return to_absolute(values, state, self.mask)

    def state_ids(self, state: np.ndarray) -> np.ndarray | None:
        """State (B, 8) -> prompt token ids (B, 8), or None when the prompt carries no state."""
        return None if self.state_tokens is None else self.state_tokens.encode(np.asarray(state))

    def action_space(self) -> dict:
        """Entries of policy_config.json's action_space that describe this codec."""
        out = {"representation": self.representation}
        if self.representation != ABSOLUTE:
            out.update(delta_mask=self.mask.tolist(), model_statistics=self.model_statistics)
        return out

    @classmethod
    def from_policy_config(cls, vocab_size: int, config: dict, where: str = "policy_config.json") -> "ActionCodec":
        space = config.get("action_space") or {}
        representation = space.get("representation", ABSOLUTE)
        if representation not in REPRESENTATIONS:
            raise ValueError(f"{where}: action_space.representation '{representation}' is unknown "
                             f"(known: {', '.join(REPRESENTATIONS)})")
        if representation != ABSOLUTE and "model_statistics" not in space:
            raise ValueError(f"{where}: action_space.model_statistics is missing ({representation} actions need it)")
        return cls(vocab_size, config["dataset_statistics"], representation=representation,
                   model_statistics=space.get("model_statistics"),
                   state_in_prompt=bool((config.get("openvla") or {}).get("state_in_prompt", False)))
