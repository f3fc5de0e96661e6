"""Actions <-> the last 256 vocabulary tokens (OpenVLA's discretisation).

Absolute joint targets are normalised to [-1, 1] with the dataset's q01/q99
(`preprocess.Normalizer`, the same code deployment uses), cut into 256 uniform bins,
and bin i is written as token id `vocab_size - 1 - i` (OpenVLA's order: the highest bin
takes the lowest id of the range). Decoding maps a token back to its bin centre.
"""

from __future__ import annotations

import numpy as np

from crane_x7_vla.preprocess import Normalizer

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
