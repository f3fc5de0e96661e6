"""Orbax files of an OpenPI checkpoint directory (the directory itself: training/checkpoint.py).

params/             inference weights: EMA of the trained weights + frozen weights,
                    a nested dict in this backend's layout (PARAMS.md)
train_state/        resume only: trainable weights, their EMA, optimizer state
tokenizer.json      the instruction tokenizer (tokenizer.model: a SentencePiece model)
policy_config.json  (+ "openpi": {"model_config", "conventions", "tokenizer_file", ...})
trainer_state.json  step, data position
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

PARAMS_DIR = "params"
TRAIN_STATE_DIR = "train_state"
TOKENIZER_FILE = "tokenizer.json"


def _save(path: Path, tree: dict) -> None:
    import orbax.checkpoint as ocp

    # arrays spread over several processes stay as they are: each process writes its own pieces
    tree = jax.tree.map(lambda x: x if isinstance(x, jax.Array) and not x.is_fully_addressable else jax.device_get(x),
                        tree)
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(Path(path).resolve(), tree)


def restore_numpy(path: Path) -> dict:
    import orbax.checkpoint as ocp

    path = Path(path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found (the checkpoint is incomplete)")
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None) or meta
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), dict(tree))
        return ckptr.restore(path, ocp.args.PyTreeRestore(restore_args=args))


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if k in out and isinstance(v, dict) else v
    return out


def flat_paths(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        p = f"{prefix}/{k}" if prefix else str(k)
        out.update(flat_paths(v, p) if isinstance(v, dict) else {p: v})
    return out


def nest(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        parts = path.split("/")
        for k in parts[:-1]:
            d = d.setdefault(k, {})
        d[parts[-1]] = v
    return out


def save_params(directory: Path, params: dict) -> None:
    _save(Path(directory) / PARAMS_DIR, params)


def save_train_state(directory: Path, trainable: dict, ema: dict, opt_state) -> None:
    leaves = jax.tree.leaves(opt_state)
    tree = {"trainable": trainable, "ema": ema, "opt": {f"{i:05d}": leaf for i, leaf in enumerate(leaves)}}
    _save(Path(directory) / TRAIN_STATE_DIR, tree)


def load_train_state(directory: Path, opt_template):
    data = restore_numpy(Path(directory) / TRAIN_STATE_DIR)
    leaves, treedef = jax.tree.flatten(opt_template)
    opt = data.get("opt", {})
    if len(opt) != len(leaves):
        raise ValueError(
            f"{directory}: optimizer state has {len(opt)} arrays, this run's optimizer {len(leaves)}; "
            f"was it trained with other optimizer settings?"
        )
    restored = [np.asarray(opt[k]).astype(np.asarray(t).dtype) for k, t in zip(sorted(opt), leaves)]
    return data["trainable"], data["ema"], jax.tree.unflatten(treedef, restored)


def fill_state(state, pure: dict, where: str):
    """Put the arrays of `pure` (nested dict) into the nnx State `state`; every weight must be
    present with its shape. Returns the state."""
    from flax import nnx

    want = {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(state)}
    have = flat_paths(pure)
    missing = sorted(set(want) - set(have))
    if missing:
        raise ValueError(f"{where}: weights missing: {', '.join(missing[:5])}")
    bad = [
        f"{k} {tuple(np.shape(have[k]))} vs {tuple(want[k].shape)}"
        for k in want
        if tuple(np.shape(have[k])) != tuple(want[k].shape)
    ]
    if bad:
        raise ValueError(f"{where}: weights of the wrong shape: {', '.join(bad[:5])}")
    nnx.replace_by_pure_dict(state, nest({k: have[k] for k in want}))
    return state
