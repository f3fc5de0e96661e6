"""Files of a model folder in the published `openvla/openvla-7b` layout, written from scratch:
a Llama-style tokenizer and the processor settings as OpenVLA's processor saves them.

Used by the `tiny` preset (model.materialize_preset), which writes a whole folder of that
layout (config.json and model.safetensors come from prismatic.OpenVLAForActionPrediction's
save_pretrained) and then loads it like any OpenVLA checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

# The published preprocessor's normalisation: the DINOv2 tower's ImageNet statistics as the
# processor stored them in bfloat16, SigLIP's 0.5
TVF_STATS = [([0.484375, 0.455078125, 0.40625], [0.228515625, 0.2236328125, 0.224609375]),
             ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])]
MEANS_STDS = [([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])]
PAD_TOKEN = "<PAD>"
FILLER = 0x4E00  # CJK characters no instruction uses fill the vocabulary up, as rare pieces end Llama's


def _special(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def write_tokenizer(dest, corpus: str, vocab: int, text_vocab: int | None = None, extra_tokens=()) -> None:
    """A Llama-style tokenizer in `dest`: `<unk>` `<s>` `</s>`, 256 byte-fallback tokens, BPE
    pieces of `corpus` with `▁` for spaces (at most `text_vocab` pieces in all, default
    vocab - 64), filled up to `vocab` pieces with characters no instruction uses; `<PAD>` is
    added as id `vocab`, then `extra_tokens` (ids vocab + 1, ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    text_vocab = vocab - 64 if text_vocab is None else text_vocab
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    if text_vocab < len(specials) or text_vocab > vocab:
        raise ValueError(f"text_vocab {text_vocab} must be between {len(specials)} and vocab ({vocab})")
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=text_vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=["\u2581"])
    tok.train_from_iterator(corpus.splitlines() * 8, trainer)
    spec = json.loads(tok.to_str())
    pieces = spec["model"]["vocab"]
    filler = FILLER
    while len(pieces) < vocab:
        pieces.setdefault(chr(filler), len(pieces))
        filler += 1
    if len(pieces) != vocab or sorted(pieces.values()) != list(range(vocab)):
        raise ValueError(f"the tokenizer has {len(pieces)} pieces, not {vocab}")
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    added = [PAD_TOKEN, *extra_tokens]
    tok.add_special_tokens(added)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok.save(str(dest / "tokenizer.json"))
    decoder = {"0": _special("<unk>"), "1": _special("<s>"), "2": _special("</s>")}
    decoder.update({str(vocab + i): _special(t) for i, t in enumerate(added)})
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder,
        "auto_map": {"AutoProcessor": "processing_prismatic.PrismaticProcessor"},
        "bos_token": "<s>", "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": False,
        "model_max_length": 2048, "pad_token": PAD_TOKEN, "padding_side": "right",
        "processor_class": "PrismaticProcessor", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>", "use_default_system_prompt": False}, indent=2))
    (dest / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": _special("<s>"), "eos_token": _special("</s>"), "pad_token": _special(PAD_TOKEN),
        "unk_token": _special("<unk>")}, indent=2))
    (dest / "added_tokens.json").write_text(json.dumps({t: vocab + i for i, t in enumerate(added)}, indent=2))


def write_processor(dest, size: int, *, fused: bool = True, stats=TVF_STATS, means_stds=MEANS_STDS) -> None:
    """preprocessor_config.json and processor_config.json as OpenVLA's processor saves them,
    for `size` x `size` pictures (resize-naive, bicubic) and one or two towers."""
    towers = 2 if fused else 1
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tvf = [{"mean": list(stats[i][0]), "std": list(stats[i][1]), "inplace": False} for i in range(towers)]
    (dest / "preprocessor_config.json").write_text(json.dumps({
        "auto_map": {"AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
                     "AutoProcessor": "processing_prismatic.PrismaticProcessor"},
        "image_processor_type": "PrismaticImageProcessor", "image_resize_strategy": "resize-naive",
        "input_sizes": [[3, size, size]] * towers, "interpolations": ["bicubic"] * towers,
        "means": [list(m) for m, _ in means_stds[:towers]], "stds": [list(s) for _, s in means_stds[:towers]],
        "processor_class": "PrismaticProcessor",
        "tvf_crop_params": [{"output_size": [size, size]}] * towers, "tvf_do_letterbox": False,
        "tvf_letterbox_fill": None, "tvf_normalize_params": tvf,
        "tvf_resize_params": [{"antialias": True, "interpolation": 3, "max_size": None, "size": [size, size]}] * towers,
        "use_fused_vision_backbone": fused}, indent=2))
    (dest / "processor_config.json").write_text(json.dumps({
        "auto_map": {"AutoProcessor": "processing_prismatic.PrismaticProcessor"},
        "processor_class": "PrismaticProcessor"}, indent=2))
