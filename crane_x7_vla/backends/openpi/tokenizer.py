"""Instruction tokenizer: one code path for a locally trained BPE and PaliGemma's tokenizer.

The `tiny` preset trains a small BPE (`tokenizers` JSON) over the instructions of the
dataset (plus a built-in word list) at training start; openpi weights use PaliGemma's
tokenizer, given as openpi's SentencePiece model file (`paligemma_tokenizer.model`, read
by spm.py) or as a `tokenizer.json` (--tokenizer), so text maps onto the released
embedding table. The file used is copied into every checkpoint (`tokenizer.json` or
`tokenizer.model`, policy_config.json openpi.tokenizer_file).

Prompt formats (PROMPT_FORMATS):
  "lowercase"  '_' -> ' ', whitespace collapsed, lower-cased; [BOS] + tokens
  "openpi"     openpi's π0: stripped, '_' and newlines -> ' ', case kept;
               [BOS] + tokens + tokens("\n") (the "start of answer" newline)
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import numpy as np

BOS_NAMES = ("<bos>", "[BOS]")
PAD_NAMES = ("<pad>", "[PAD]")
UNK = "[UNK]"

#: Words of typical manipulation instructions, so unseen prompts still tokenise into words.
BASE_WORDS = (
    "pick place put move push pull open close grasp grab lift lower drop stack unstack the a an "
    "on in into onto to from of and with at near left right up down top bottom front back red "
    "green blue yellow black white orange purple cube block box bowl cup plate bottle drawer "
    "object objects table tray bin basket handle door lid button towel pen ball can fork spoon "
    "it then next center middle side gripper arm robot"
)


PROMPT_FORMATS = ("lowercase", "openpi")
JSON_FILE, SPM_FILE = "tokenizer.json", "tokenizer.model"


def clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("_", " ")).strip().lower()


def clean_openpi(text: str) -> str:
    return text.strip().replace("_", " ").replace("\n", " ")


class PromptTokenizer:
    def __init__(self, tokenizer, max_len: int, source: str = "", prompt_format: str = "lowercase"):
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt format must be one of {PROMPT_FORMATS} (got {prompt_format!r})")
        self.tok = tokenizer
        self.max_len = int(max_len)
        self.source = source
        self.prompt_format = prompt_format
        self.bos_id = self._find(BOS_NAMES)
        self.pad_id = self._find(PAD_NAMES)

    def _find(self, names) -> int:
        for name in names:
            i = self.tok.token_to_id(name)
            if i is not None:
                return int(i)
        raise ValueError(
            f"tokenizer {self.source or ''} has none of the tokens {', '.join(names)}; "
            f"use PaliGemma's tokenizer (.model or tokenizer.json) or let training build one"
        )

    @property
    def file_name(self) -> str:
        """The name this tokenizer is saved under in a checkpoint."""
        from crane_x7_vla.backends.openpi.spm import SentencePieceBPE

        return SPM_FILE if isinstance(self.tok, SentencePieceBPE) else JSON_FILE

    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size())

    @classmethod
    def train(cls, texts, vocab_size: int, max_len: int) -> "PromptTokenizer":
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["[PAD]", "[BOS]", UNK],
            initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation),
            show_progress=False,
        )
        corpus = [clean(t) for t in texts if t] + [BASE_WORDS]
        tok.train_from_iterator(corpus, trainer=trainer)
        return cls(tok, max_len, source="(trained on the dataset's instructions)")

    @classmethod
    def from_file(cls, path: str | Path, max_len: int, prompt_format: str = "lowercase") -> "PromptTokenizer":
        """A tokenizers JSON file, or a SentencePiece model file (any file not starting with '{')."""
        from tokenizers import Tokenizer

        from crane_x7_vla.backends.openpi.spm import SentencePieceBPE

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer file {path} not found (expected a tokenizers JSON file or a SentencePiece model)")
        with path.open("rb") as f:
            head = f.read(64).lstrip()
        if not head.startswith(b"{"):
            return cls(SentencePieceBPE.from_file(path), max_len, source=str(path), prompt_format=prompt_format)
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path} is not a tokenizers JSON file: {exc}") from None
        return cls(tok, max_len, source=str(path), prompt_format=prompt_format)

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray, bool]:
        """-> (ids int32 (max_len,), mask bool (max_len,), truncated)."""
        if self.prompt_format == "openpi":
            ids = ([self.bos_id] + self.tok.encode(clean_openpi(text), add_special_tokens=False).ids
                   + self.tok.encode("\n", add_special_tokens=False).ids)
        else:
            ids = [self.bos_id] + self.tok.encode(clean(text), add_special_tokens=False).ids
        truncated = len(ids) > self.max_len
        ids = ids[: self.max_len]
        out = np.full(self.max_len, self.pad_id, np.int32)
        out[: len(ids)] = ids
        mask = np.zeros(self.max_len, bool)
        mask[: len(ids)] = True
        return out, mask, truncated
