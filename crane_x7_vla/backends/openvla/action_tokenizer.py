"""Actions <-> the last 256 vocabulary tokens, discretised exactly as OpenVLA does.

Absolute joint targets are normalised to [-1, 1] with the dataset's q01/q99
(`preprocess.Normalizer`, the same code deployment uses); dimensions left out by the
normalisation mask (`--no-normalize-gripper`: the gripper) pass through as they are.
The normalised value is clipped to [-1, 1] and placed among the 256 bin EDGES
`np.linspace(-1, 1, 256)` with `np.digitize` (d in 1..256); the token id is
`vocab_size - d`, so the highest values take the lowest ids of the range. A token id
decodes to the centre of its bin: d - 1, clipped to 0..254, indexes the 255 centres
between neighbouring edges. (Checkpoints written before this scheme was recorded used
256 equal bins, bin i as id `vocab_size - 1 - i`; `LEGACY_UNIFORM` reads them.)

`ActionCodec` adds the checkpoint's action representation (absolute, or arm deltas from
the current state), the optional state tokens of the prompt and the optional goal tokens
written before the actions (`preprocess.goal_points`: where the hand will be at the end of
the current movement, x/y/z cut into the same bins over `preprocess.GOAL_BOUNDS`).
"""

from __future__ import annotations

import numpy as np

from crane_x7_vla.checkpoint_contract import CONFIG_FILE
from crane_x7_vla.preprocess import (
    ABSOLUTE,
    GOAL_BOUNDS,
    REPRESENTATIONS,
    Normalizer,
    delta_mask,
    to_absolute,
    to_delta,
)

N_BINS = 256
OPENVLA_BINS = "openvla"  # np.linspace(-1, 1, 256) as edges, np.digitize, 255 centres (OpenVLA's ActionTokenizer)
LEGACY_UNIFORM = "uniform"  # 256 equal bins, bin i as id vocab_size - 1 - i (checkpoints without the field)
DISCRETIZATIONS = (OPENVLA_BINS, LEGACY_UNIFORM)


class ActionTokenizer:
    """Values in robot units <-> token ids for one group of dimensions.

    `mask` (one bool per dimension, default all True): the dimensions the normaliser maps
    to [-1, 1]; the others are binned as they are (clipped to [-1, 1]) and decode to the
    bin centre itself, as OpenVLA's normalisation mask does."""

    def __init__(
        self,
        vocab_size: int,
        normalizer: Normalizer,
        n_bins: int = N_BINS,
        *,
        mask: np.ndarray | None = None,
        discretization: str = OPENVLA_BINS,
    ):
        if vocab_size <= n_bins:
            raise ValueError(f"the tokenizer's vocabulary ({vocab_size}) must be larger than {n_bins} action bins")
        if discretization not in DISCRETIZATIONS:
            raise ValueError(
                f"action discretization '{discretization}' is unknown (known: {', '.join(DISCRETIZATIONS)})"
            )
        self.vocab_size = int(vocab_size)
        self.n_bins = n_bins
        self.normalizer = normalizer
        self.discretization = discretization
        self.mask = None if mask is None else np.asarray(mask, dtype=bool)
        if discretization == OPENVLA_BINS:
            self.edges = np.linspace(-1.0, 1.0, n_bins)
            self.centers = (self.edges[:-1] + self.edges[1:]) / 2.0
        else:
            self.edges = None
            self.centers = -1.0 + (np.arange(n_bins) + 0.5) * (2.0 / n_bins)

    @property
    def first_id(self) -> int:
        """Lowest token id used for actions (ids first_id .. vocab_size - 1)."""
        return self.vocab_size - self.n_bins

    def normalize(self, values: np.ndarray) -> np.ndarray:
        """Robot units -> the values that are binned (masked-out dimensions unchanged)."""
        normalized = self.normalizer.normalize(values)
        if self.mask is None:
            return normalized
        return np.where(self.mask, normalized, np.asarray(values, dtype=np.float64))

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        values = self.normalizer.unnormalize(normalized)
        if self.mask is None:
            return values
        return np.where(self.mask, values, np.asarray(normalized, dtype=np.float64))

    def ids_of_normalized(self, normalized: np.ndarray) -> np.ndarray:
        """Normalised values (any shape) -> token ids (int64)."""
        x = np.clip(np.asarray(normalized, dtype=np.float64), -1.0, 1.0)
        if self.discretization == OPENVLA_BINS:
            return (self.vocab_size - np.digitize(x, self.edges)).astype(np.int64)
        bins = np.clip(np.floor((x + 1.0) * 0.5 * self.n_bins), 0, self.n_bins - 1).astype(np.int64)
        return self.vocab_size - 1 - bins

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Robot units (..., D) -> token ids (..., D)."""
        return self.ids_of_normalized(self.normalize(actions))

    def decode_normalized(self, token_ids: np.ndarray, clip: bool = False) -> np.ndarray:
        """Token ids -> bin centres in [-1, 1]. `clip` (OpenVLA bins only): any token id is taken,
        as OpenVLA's predict_action takes what greedy decoding over the whole vocabulary wrote
        (an id below the range decodes as the highest bin, one above it as the lowest)."""
        ids = np.asarray(token_ids, dtype=np.int64)
        if clip and self.discretization == OPENVLA_BINS:
            return self.centers[np.clip(self.vocab_size - ids - 1, 0, len(self.centers) - 1)]
        if np.any(ids < self.first_id) or np.any(ids >= self.vocab_size):
            raise ValueError(f"token ids outside the action range [{self.first_id}, {self.vocab_size})")
        if self.discretization == OPENVLA_BINS:
            return self.centers[np.clip(self.vocab_size - ids - 1, 0, len(self.centers) - 1)]
        return self.centers[self.vocab_size - 1 - ids]

    def decode(self, token_ids: np.ndarray, clip: bool = False) -> np.ndarray:
        """Token ids (..., D) -> values in robot units (float64); `clip`: see decode_normalized."""
        return self.unnormalize(self.decode_normalized(token_ids, clip))


class ActionCodec:
    """Everything between robot units and token ids for one checkpoint, used identically by
    the trainer and the policy: the action representation (absolute targets, or arm deltas
    from the current state with the gripper absolute) and, with `state_in_prompt`, the
    joint state as 8 prompt tokens (normalised with the dataset's proprio q01/q99 and cut
    into the same 256 bins as the actions) and, with `goal_tokens`, 3 goal tokens before the
    actions (x, y, z of the goal point over GOAL_BOUNDS); with `goal_before_state` as well
    (and the state in the prompt) the goal tokens come before the state tokens (see
    `prompt.GOAL_FIRST_TEMPLATE`)."""

    def __init__(
        self,
        vocab_size: int,
        statistics: dict,
        *,
        representation: str = ABSOLUTE,
        model_statistics: dict | None = None,
        state_in_prompt: bool = False,
        goal_tokens: bool = False,
        goal_before_state: bool = False,
        normalization_mask=None,
        discretization: str = OPENVLA_BINS,
    ):
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
        if normalization_mask is None:
            normalization_mask = np.ones(len(self.mask), dtype=bool)
        self.normalization_mask = np.asarray(normalization_mask, dtype=bool)
        if self.normalization_mask.shape != self.mask.shape:
            raise ValueError(
                f"normalization_mask must hold {len(self.mask)} booleans (got {self.normalization_mask.tolist()})"
            )
        self.discretization = discretization
        self.tokens = ActionTokenizer(
            vocab_size, normalizer, mask=self.normalization_mask, discretization=discretization
        )
        self.state_in_prompt = bool(state_in_prompt)
        self.state_tokens = (
            ActionTokenizer(vocab_size, Normalizer.from_stats(statistics, "proprio"), discretization=discretization)
            if self.state_in_prompt
            else None
        )
        self.goal_tokens = (
            ActionTokenizer(vocab_size, Normalizer(GOAL_BOUNDS[0], GOAL_BOUNDS[1]), discretization=discretization)
            if goal_tokens
            else None
        )
        self.n_goal = 0 if self.goal_tokens is None else len(GOAL_BOUNDS[0])
        self.goal_before_state = self.goal_first_in_effect(goal_before_state, self.n_goal > 0, self.state_in_prompt)

    @staticmethod
    def goal_first_in_effect(goal_before_state: bool, goal_tokens: bool, state_in_prompt: bool) -> bool:
        """The goal goes before the state only where there are both goal tokens and state tokens."""
        return bool(goal_before_state and goal_tokens and state_in_prompt)

    @property
    def goal_first(self) -> int:
        """How many of the written tokens come before the state tokens (`model.build_batch`)."""
        return self.n_goal if self.goal_before_state else 0

    def n_tokens(self, horizon: int) -> int:
        """How many tokens the model writes per prediction: the goal's, then 8 per chunk step."""
        return self.n_goal + len(self.mask) * int(horizon)

    @property
    def first_id(self) -> int:
        return self.tokens.first_id

    def encode(self, actions: np.ndarray, state: np.ndarray, goal: np.ndarray | None = None) -> np.ndarray:
        """Absolute targets (B, 8) or a chunk (B, H, 8) + state (B, 8) -> token ids
        (B, n_goal + 8 * H): the goal point's (B, 3) first when the codec has goal tokens,
        then the chunk step after step (every step relative to the same current state)."""
        actions = np.asarray(actions)
        chunk = actions[:, None] if actions.ndim == 2 else actions
        ids = self.tokens.encode(to_delta(chunk, state, self.mask)).reshape(len(chunk), -1)
        if self.goal_tokens is None:
            return ids
        return np.concatenate([self.goal_ids(goal), ids], axis=1)

    def goal_ids(self, goal: np.ndarray | None) -> np.ndarray:
        """Goal points (B, 3) in metres -> their (B, 3) token ids."""
        if self.goal_tokens is None:
            raise ValueError("this codec has no goal tokens")
        if goal is None:
            raise ValueError("a codec with goal tokens needs the goal point of every sample")
        return self.goal_tokens.encode(np.asarray(goal, np.float64).reshape(-1, self.n_goal))

    def decode(self, token_ids: np.ndarray, state: np.ndarray, clip: bool = False) -> np.ndarray:
        """Token ids (B, n_goal + 8 * H) + state (B, 8) -> absolute targets (B, H, 8) float64
        (the goal tokens, when the codec has them, are skipped; see `decode_goal`; `clip`: any
        token id is taken, see ActionTokenizer.decode_normalized)."""
        ids = np.asarray(token_ids)[:, self.n_goal :]
        values = self.tokens.decode(ids.reshape(len(ids), -1, len(self.mask)), clip)
        return to_absolute(values, state, self.mask)

    def decode_goal(self, token_ids: np.ndarray) -> np.ndarray | None:
        """The goal point (B, 3) in metres written before the actions, or None without goal tokens."""
        if self.goal_tokens is None:
            return None
        return self.goal_tokens.decode(np.asarray(token_ids)[:, : self.n_goal])

    def state_ids(self, state: np.ndarray) -> np.ndarray | None:
        """State (B, 8) -> prompt token ids (B, 8), or None when the prompt carries no state."""
        return None if self.state_tokens is None else self.state_tokens.encode(np.asarray(state))

    def action_space(self) -> dict:
        """Entries of policy_config.json's action_space that describe this codec."""
        out = {
            "representation": self.representation,
            "discretization": self.discretization,
            "normalization_mask": self.normalization_mask.tolist(),
        }
        if self.representation != ABSOLUTE:
            out.update(delta_mask=self.mask.tolist(), model_statistics=self.model_statistics)
        return out

    @classmethod
    def from_policy_config(cls, vocab_size: int, config: dict, where: str = CONFIG_FILE) -> "ActionCodec":
        space = config.get("action_space") or {}
        representation = space.get("representation", ABSOLUTE)
        if representation not in REPRESENTATIONS:
            raise ValueError(
                f"{where}: action_space.representation '{representation}' is unknown "
                f"(known: {', '.join(REPRESENTATIONS)})"
            )
        if representation != ABSOLUTE and "model_statistics" not in space:
            raise ValueError(f"{where}: action_space.model_statistics is missing ({representation} actions need it)")
        discretization = space.get("discretization", LEGACY_UNIFORM)
        if discretization not in DISCRETIZATIONS:
            raise ValueError(
                f"{where}: action_space.discretization '{discretization}' is unknown "
                f"(known: {', '.join(DISCRETIZATIONS)})"
            )
        mask = space.get("normalization_mask")
        if mask is not None and (
            not isinstance(mask, list)
            or len(mask) != len(delta_mask(representation))
            or not all(isinstance(m, bool) for m in mask)
        ):
            raise ValueError(
                f"{where}: action_space.normalization_mask must be a list of "
                f"{len(delta_mask(representation))} booleans (got {mask!r})"
            )
        return cls(
            vocab_size,
            config["dataset_statistics"],
            representation=representation,
            model_statistics=space.get("model_statistics"),
            normalization_mask=mask,
            discretization=discretization,
            state_in_prompt=bool((config.get("openvla") or {}).get("state_in_prompt", False)),
            goal_tokens=bool((config.get("openvla") or {}).get("goal_tokens", False)),
            goal_before_state=bool((config.get("openvla") or {}).get("goal_before_state", False)),
        )
