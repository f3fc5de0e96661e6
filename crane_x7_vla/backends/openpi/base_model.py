"""A base model written by `crane-x7-vla pretrain --backend openpi`: a preset's weights after the
pretraining stage, its prompt tokenizer and pretraining.json (the preset, picture size, figures)."""

from __future__ import annotations

import json
from pathlib import Path

from crane_x7_vla.errors import ConfigError

MARKER = "pretraining.json"


def read_base(path) -> dict | None:
    """pretraining.json of an openpi base model directory, or None for anything else."""
    marker = Path(str(path)).expanduser() / MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{marker}: not readable JSON ({exc})") from None
    return info if isinstance(info, dict) and info.get("backend") == "openpi" else None


class PretrainedBase:
    """The weights and tokenizer of a base model directory, checked when read."""

    def __init__(self, path) -> None:
        from crane_x7_vla.backends.openpi.ckpt_io import PARAMS_DIR, TOKENIZER_FILE

        self.path = Path(str(path)).expanduser()
        self.info = read_base(self.path)
        if self.info is None:
            raise ConfigError(f"--model {self.path}: no {MARKER} of an openpi base model")
        self.params_dir = self.path / PARAMS_DIR
        self.tokenizer_file = self.path / TOKENIZER_FILE
        for part in (self.params_dir, self.tokenizer_file):
            if not part.exists():
                raise ConfigError(f"--model {self.path}: {part.name} is missing (the base model is incomplete; "
                                  f"write it again with `crane-x7-vla pretrain --backend openpi`)")

    def weights(self) -> dict:
        """{parameter path: array} as the model names its weights."""
        from crane_x7_vla.backends.openpi import ckpt_io

        return ckpt_io.flat_paths(ckpt_io.restore_numpy(self.params_dir))
