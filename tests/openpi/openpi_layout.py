"""Checkpoints in openpi's on-disk layout, written by this test code at any size.

The layout follows openpi's source: a step directory written by an orbax CheckpointManager
with the items `params` ({"params": tree}) and `train_state`, plus
`assets/<asset_id>/norm_stats.json` ({"norm_stats": {"state": {...}, "actions": {...}}});
the tree is Pi0's nnx state: SigLIP under PaliGemma/img (big_vision names, blocks scanned
as `encoderblock`), the Gemma mixture under PaliGemma/llm (scanned `layers`, the action
expert's modules suffixed `_1`, one `qkv_einsum` where a decoder has as many KV heads as
heads), LoRA factors `lora_a`/`lora_b` in attention einsums and `<weight>_lora_a/_b` in
the MLP, and every leaf wrapped in {"value": ...} as nnx.State saves it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def openpi_tree(cfg, rng, *, lora=None, scale=0.05):
    """Random π0 weights of `cfg`'s sizes in openpi's tree.

    lora: {"": (attn_rank, ffn_rank), "_1": (...)} per decoder suffix ("" prefix, "_1" expert);
    a rank of 0 leaves that adapter group out.
    """
    lora = lora or {}
    v, p, e = cfg.vision, cfg.prefix, cfg.expert
    L, W, M, Hn = v.depth, v.width, v.mlp_dim, v.num_heads
    r = lambda *shape: (rng.normal(size=shape) * scale).astype(np.float32)  # noqa: E731
    dense = lambda i, o, lead=(): {"kernel": r(*lead, i, o), "bias": r(*lead, o)}  # noqa: E731
    ln = lambda: {"scale": 1.0 + r(L, W), "bias": r(L, W)}  # noqa: E731
    hd = W // Hn
    img = {
        "embedding": {"kernel": r(v.patch_size, v.patch_size, 3, W), "bias": r(W)},
        "pos_embedding": r(1, cfg.num_patches, W),
        "Transformer": {
            "encoderblock": {
                "LayerNorm_0": ln(),
                "LayerNorm_1": ln(),
                "MultiHeadDotProductAttention_0": {
                    "query": {"kernel": r(L, W, Hn, hd), "bias": r(L, Hn, hd)},
                    "key": {"kernel": r(L, W, Hn, hd), "bias": r(L, Hn, hd)},
                    "value": {"kernel": r(L, W, Hn, hd), "bias": r(L, Hn, hd)},
                    "out": {"kernel": r(L, Hn, hd, W), "bias": r(L, W)},
                },
                "MlpBlock_0": {"Dense_0": dense(W, M, (L,)), "Dense_1": dense(M, W, (L,))},
            },
            "encoder_norm": {"scale": 1.0 + r(W), "bias": r(W)},
        },
        "head": dense(W, p.width),
    }
    layers = {"attn": {}}
    for suffix, g in (("", p), ("_1", e)):
        D, F, N, K, H, Ld = g.width, g.mlp_dim, g.num_heads, g.num_kv_heads, g.head_dim, g.depth
        attn_rank, ffn_rank = lora.get(suffix, (0, 0))

        def einsum(shape, rank):
            out = {"w": r(Ld, *shape)}
            if rank:  # A: output axis -> rank; B: input axis -> rank
                out["lora_a"] = r(Ld, *shape[:-1], rank)
                out["lora_b"] = r(Ld, *shape[:-2], rank, shape[-1])
            return out

        if K == N:
            layers["attn"][f"qkv_einsum{suffix}"] = einsum((3, N, D, H), attn_rank)
        else:
            layers["attn"][f"q_einsum{suffix}"] = einsum((N, D, H), attn_rank)
            layers["attn"][f"kv_einsum{suffix}"] = einsum((2, K, D, H), attn_rank)
        layers["attn"][f"attn_vec_einsum{suffix}"] = einsum((N, H, D), attn_rank)
        layers[f"pre_attention_norm{suffix}"] = {"scale": r(Ld, D)}
        layers[f"pre_ffw_norm{suffix}"] = {"scale": r(Ld, D)}
        mlp = {"gating_einsum": r(Ld, 2, D, F), "linear": r(Ld, F, D)}
        if ffn_rank:
            mlp["gating_einsum_lora_a"] = r(Ld, 2, D, ffn_rank)
            mlp["gating_einsum_lora_b"] = r(Ld, 2, ffn_rank, F)
            mlp["linear_lora_a"] = r(Ld, F, ffn_rank)
            mlp["linear_lora_b"] = r(Ld, ffn_rank, D)
        layers[f"mlp{suffix}"] = mlp
    A, E = cfg.action_dim, e.width
    tree = {
        "PaliGemma": {
            "img": img,
            "llm": {
                "embedder": {"input_embedding": r(cfg.vocab_size, p.width) * 20},
                "layers": layers,
                "final_norm": {"scale": r(p.width)},
                "final_norm_1": {"scale": r(E)},
            },
        },
        "state_proj": dense(A, E),
        "action_in_proj": dense(A, E),
        "action_time_mlp_in": dense(2 * E, E),
        "action_time_mlp_out": dense(E, E),
        "action_out_proj": dense(E, A),
    }
    return _wrap_values(tree)


def _wrap_values(tree):
    if isinstance(tree, dict):
        return {k: _wrap_values(v) for k, v in tree.items()}
    return {"value": tree}


def unwrap(tree):
    """The tree without the {"value": ...} wrappers (what openpi's restore_params returns)."""
    if isinstance(tree, dict):
        if set(tree) == {"value"} and not isinstance(tree["value"], dict):
            return tree["value"]
        return {k: unwrap(v) for k, v in tree.items()}
    return tree


def norm_stats(state_dim=8, action_dim=8, seed=0):
    """norm stats in openpi's NormStats fields (mean, std, q01, q99) per key."""
    rng = np.random.default_rng(seed)

    def entry(n):
        mean = rng.normal(size=n) * 0.1
        std = rng.uniform(0.05, 0.5, n)
        return {
            "mean": mean.tolist(),
            "std": std.tolist(),
            "q01": (mean - 2.3 * std).tolist(),
            "q99": (mean + 2.3 * std).tolist(),
        }

    return {"state": entry(state_dim), "actions": entry(action_dim)}


def write_checkpoint(run_dir: Path, step: int, tree: dict, stats: dict | None = None, asset_id: str = "crane_x7"):
    """Write a training checkpoint as openpi's CheckpointManager lays it out; returns the step directory."""
    import orbax.checkpoint as ocp

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    mngr = ocp.CheckpointManager(
        run_dir,
        item_handlers={"train_state": ocp.PyTreeCheckpointHandler(), "params": ocp.PyTreeCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=False),
    )
    train_state = {"step": np.asarray(step, np.int32), "opt_state": {"count": np.asarray(step, np.int32)}}
    mngr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.PyTreeSave({"params": tree}), train_state=ocp.args.PyTreeSave(train_state)
        ),
    )
    mngr.wait_until_finished()
    mngr.close()
    step_dir = run_dir / str(step)
    if stats is not None:
        d = step_dir / "assets" / asset_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "norm_stats.json").write_text(json.dumps({"norm_stats": stats}, indent=2))
    return step_dir


def paligemma_like_tokenizer(path: Path, words=()) -> Path:
    """A tokenizers JSON file with Gemma's special tokens at Gemma's ids (<pad> 0, <eos> 1, <bos> 2)
    and a "\\n" token; words become whole-word tokens (case kept, '▁' marks a leading space)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "\n": 4, "▁": 5}
    for word in words:
        for piece in (f"▁{word}", word):
            vocab.setdefault(piece, len(vocab))
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?-":
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(
        models.WordPiece(vocab, unk_token="<unk>", continuing_subword_prefix="", max_input_chars_per_word=100)
    )
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Replace("▁", " ")
    tok.save(str(path))
    return Path(path)


def write_spm_model(
    path, pieces, *, byte_fallback=True, add_dummy_prefix=False, remove_extra_whitespaces=False, unk_id=3
) -> Path:
    """Write a SentencePiece BPE ModelProto (sentencepiece_model.proto field numbers) with these
    (piece, score, type) entries, byte fallback and an identity normaliser, as Gemma's model has."""
    import struct

    from crane_x7_vla.backends.openpi.spm import BPE

    def key(num, wire):
        return _enc_varint(num << 3 | wire)

    def length_delimited(num, payload: bytes):
        return key(num, 2) + _enc_varint(len(payload)) + payload

    body = b""
    for piece, score, kind in pieces:
        msg = (
            length_delimited(1, piece.encode("utf-8"))
            + key(2, 5)
            + struct.pack("<f", score)
            + key(3, 0)
            + _enc_varint(kind)
        )
        body += length_delimited(1, msg)
    trainer = (
        key(3, 0) + _enc_varint(BPE) + key(35, 0) + _enc_varint(int(byte_fallback)) + key(40, 0) + _enc_varint(unk_id)
    )
    body += length_delimited(2, trainer)
    normalizer = (
        length_delimited(1, b"identity")
        + key(3, 0)
        + _enc_varint(int(add_dummy_prefix))
        + key(4, 0)
        + _enc_varint(int(remove_extra_whitespaces))
        + key(5, 0)
        + _enc_varint(1)
    )
    body += length_delimited(3, normalizer)
    Path(path).write_bytes(body)
    return Path(path)


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)
