"""A SentencePiece BPE model file (PaliGemma's `paligemma_tokenizer.model`) read and applied
without the sentencepiece library.

The file is a `sentencepiece.ModelProto` (protobuf): pieces with scores and types, the
trainer spec (model type, byte fallback, special ids) and the normalizer spec. Encoding is
SentencePiece's BPE: the text is normalised (spaces become "▁", an optional "▁" in front),
split into characters (user-defined pieces kept whole), then the adjacent pair whose union
is a piece with the highest score is merged (the leftmost on ties) until no pair is a
piece; characters that are no piece become their UTF-8 bytes <0xXX> (byte fallback) or <unk>.
Only the identity normaliser is supported (Gemma's); other models need their tokenizer.json.

`SentencePieceBPE` offers the subset of a `tokenizers.Tokenizer` that PromptTokenizer uses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE = 2


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message; LEN values as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated message")
        yield num, wire, value


@dataclass
class _Spec:
    pieces: list[tuple[str, float, int]] = field(default_factory=list)
    model_type: int = 1
    byte_fallback: bool = False
    unk_id: int = 0
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    normalizer: str = ""
    charsmap: bytes = b""


def _parse(data: bytes) -> _Spec:
    spec = _Spec()
    for num, wire, value in _fields(data):
        if num == 1 and wire == 2:
            piece, score, kind = "", 0.0, NORMAL
            for n, w, v in _fields(value):
                if n == 1:
                    piece = v.decode("utf-8")
                elif n == 2 and w == 5:
                    score = struct.unpack("<f", v)[0]
                elif n == 3:
                    kind = int(v)
            spec.pieces.append((piece, score, kind))
        elif num == 2 and wire == 2:
            for n, _, v in _fields(value):
                if n == 3:
                    spec.model_type = int(v)
                elif n == 35:
                    spec.byte_fallback = bool(v)
                elif n == 40:
                    spec.unk_id = int(v)
        elif num == 3 and wire == 2:
            for n, _, v in _fields(value):
                if n == 1:
                    spec.normalizer = v.decode("utf-8")
                elif n == 2:
                    spec.charsmap = bytes(v)
                elif n == 3:
                    spec.add_dummy_prefix = bool(v)
                elif n == 4:
                    spec.remove_extra_whitespaces = bool(v)
                elif n == 5:
                    spec.escape_whitespaces = bool(v)
    return spec


@dataclass
class Encoding:
    ids: list[int]


class SentencePieceBPE:
    def __init__(self, data: bytes, source: str = ""):
        where = source or "SentencePiece model"
        try:
            spec = _parse(data)
        except (ValueError, UnicodeDecodeError, struct.error) as exc:
            raise ValueError(f"{where}: not a SentencePiece model file ({exc})") from None
        if not spec.pieces:
            raise ValueError(f"{where}: not a SentencePiece model file (no pieces)")
        if spec.model_type != BPE:
            raise ValueError(f"{where}: a SentencePiece model of type {spec.model_type}; only BPE (2) models are read "
                             f"here, use the tokenizer's tokenizer.json")
        if spec.charsmap or spec.normalizer not in ("", "identity"):
            raise ValueError(f"{where}: normaliser '{spec.normalizer}' is not supported (only identity); "
                             f"use the tokenizer's tokenizer.json")
        self.data, self.spec, self.source = bytes(data), spec, source
        self.vocab = {p: i for i, (p, _, _) in enumerate(spec.pieces)}
        self.scores = {p: s for p, s, k in spec.pieces if k in (NORMAL, USER_DEFINED)}
        self.user_defined = sorted((p for p, _, k in spec.pieces if k == USER_DEFINED), key=len, reverse=True)
        self.bytes = {p: i for i, (p, _, k) in enumerate(spec.pieces) if k == BYTE}

    @classmethod
    def from_file(cls, path: str | Path) -> "SentencePieceBPE":
        return cls(Path(path).read_bytes(), source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.data)

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def get_vocab_size(self) -> int:
        return len(self.spec.pieces)

    def _normalise(self, text: str) -> str:
        if self.spec.remove_extra_whitespaces:
            text = " ".join(t for t in text.split(" ") if t)
        if self.spec.add_dummy_prefix and text:
            text = " " + text
        if self.spec.escape_whitespaces:
            text = text.replace(" ", "▁")
        if self.spec.remove_extra_whitespaces:  # trailing "▁" go too, escaped or given
            text = text.rstrip("▁")
        return text

    def _symbols(self, text: str) -> list[str]:
        out, i = [], 0
        while i < len(text):
            for piece in self.user_defined:
                if text.startswith(piece, i):
                    out.append(piece)
                    i += len(piece)
                    break
            else:
                out.append(text[i])
                i += 1
        return out

    def encode(self, text: str, add_special_tokens: bool = False) -> Encoding:
        symbols = self._symbols(self._normalise(text))
        fixed = set(self.user_defined)
        while True:
            best, best_score = -1, None
            for i in range(len(symbols) - 1):
                if symbols[i] in fixed or symbols[i + 1] in fixed:
                    continue
                score = self.scores.get(symbols[i] + symbols[i + 1])
                if score is not None and (best_score is None or score > best_score):
                    best, best_score = i, score
            if best < 0:
                break
            symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
        ids = []
        for s in symbols:
            if s in self.vocab and self.spec.pieces[self.vocab[s]][2] in (NORMAL, USER_DEFINED):
                ids.append(self.vocab[s])
            elif self.spec.byte_fallback and self.bytes:
                ids.extend(self.bytes.get(f"<0x{b:02X}>", self.spec.unk_id) for b in s.encode("utf-8"))
            else:
                ids.append(self.spec.unk_id)
        return Encoding(ids)
