"""OpenPI backend speed: train step time, data pipeline headroom, inference time per chunk.

    python bench/openpi_step.py                       # tiny preset on this machine (CPU)
    python bench/openpi_step.py --preset pi0          # π0-sized, random weights (GPU machine):
                                                      #   LoRA step time + peak memory at batch 32,
                                                      #   inference time per chunk (batch 1, 10 Euler steps)
    python bench/openpi_step.py --preset pi0 --depth-override 1 --batch-size 2 --image-size 224x224
                                                      # the same code end to end on a CPU
Prints figures; --json PATH also writes them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def _timeit(fn, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def model_bench(args) -> dict:
    import jax

    from crane_x7_vla.backends.openpi import train_state as ts
    from crane_x7_vla.backends.openpi.presets import get_preset, with_depth
    from crane_x7_vla.preprocess import parse_image_size

    w, h = parse_image_size(args.image_size)
    dev = jax.devices()[0]
    on_gpu = dev.platform == "gpu"
    cfg = replace(
        get_preset(args.preset),
        image_width=w,
        image_height=h,
        num_cameras=args.cameras,
        action_horizon=args.action_horizon,
        lora_rank=args.lora_rank,
        lora_alpha=float(args.lora_rank or 1),
        remat=args.remat,
        dtype="bfloat16" if (on_gpu and args.precision != "fp32") else "float32",
    )
    if args.depth_override:
        cfg = with_depth(cfg, args.depth_override)
    t0 = time.perf_counter()
    parts = ts.build(cfg, 0, freeze_vision=args.freeze_vision)
    jax.block_until_ready(parts.trainable)
    init_s = time.perf_counter() - t0
    n_train = sum(x.size for x in jax.tree.leaves(parts.trainable))
    n_all = n_train + sum(x.size for x in jax.tree.leaves(parts.frozen))
    tx = ts.optimizer(ts.learning_rate_schedule(3e-4, 1000, 0.05, "cosine"), weight_decay=1e-10, max_grad_norm=1.0)
    opt_state = tx.init(parts.trainable)
    ema = jax.tree.map(lambda x: x.copy(), parts.trainable)
    rng = np.random.default_rng(0)
    B, L, H, A = args.batch_size, cfg.max_token_len, cfg.action_horizon, cfg.action_dim
    batch = {
        "images": rng.integers(0, 255, (1, B, cfg.num_cameras, h, w, 3), dtype=np.uint8),
        "tokens": rng.integers(3, 500, (1, B, L)).astype(np.int32),
        "token_mask": np.ones((1, B, L), bool),
        "state": rng.uniform(-1, 1, (1, B, A)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (1, B, H, A)).astype(np.float32),
    }
    batch = jax.device_put(batch)
    step = jax.jit(ts.make_train_step(parts.graphdef, tx, cfg, 0, 0.99), donate_argnums=(0, 2, 3))
    state = [parts.trainable, ema, opt_state]
    counter = [0]

    def one_step():
        tr, em, op, m = step(state[0], parts.frozen, state[1], state[2], batch, np.int32(counter[0]))
        state[:] = [tr, em, op]
        counter[0] += 1
        float(m["loss"])

    t0 = time.perf_counter()
    one_step()
    compile_s = time.perf_counter() - t0
    step_s, _ = _timeit(one_step, args.steps)

    sample = jax.jit(ts.make_sampler(parts.graphdef, 10))
    obs = {k: v[0, :1] for k, v in batch.items() if k != "actions"}
    key = ts.prng_key(1)
    t0 = time.perf_counter()
    np.asarray(sample(obs, key, state[1], parts.frozen))
    sample_compile_s = time.perf_counter() - t0
    infer_s, _ = _timeit(lambda: np.asarray(sample(obs, key, state[1], parts.frozen)), args.steps)

    peak = None
    if on_gpu:
        stats = dev.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "preset": args.preset,
        "device": str(dev),
        "platform": dev.platform,
        "dtype": cfg.dtype,
        "depth_override": args.depth_override,
        "image_size": args.image_size,
        "batch_size": B,
        "action_horizon": H,
        "lora_rank": cfg.lora_rank,
        "remat": cfg.remat,
        "freeze_vision": args.freeze_vision,
        "params_total": int(n_all),
        "params_trained": int(n_train),
        "init_s": init_s,
        "train_compile_s": compile_s,
        "train_step_s": step_s,
        "samples_per_s": B / step_s,
        "infer_compile_s": sample_compile_s,
        "infer_chunk_s": infer_s,
        "peak_device_bytes": peak,
        "peak_host_rss_bytes": rss,
    }


def pipeline_bench(args, step_s: float) -> dict:
    """Samples/s the real data pipeline (episodes -> BatchStream -> model arrays) delivers."""
    from crane_x7_vla.backends.openpi.batching import Batcher
    from crane_x7_vla.backends.openpi.tokenizer import PromptTokenizer
    from crane_x7_vla.backends.openpi.transforms import ActionSpace, model_action_statistics
    from crane_x7_vla.preprocess import ImageSpec, parse_image_size
    from crane_x7_vla.training.data import BatchStream, load_training_data
    from crane_x7_vla.episode.stats import write_statistics
    from crane_x7_vla.episode.synthetic import write_synthetic_dataset

    w, h = parse_image_size(args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(tmp, episodes=4, steps=60, cameras={"primary": (640, 480)})
        write_statistics(tmp)
        data = load_training_data(tmp, val_ratio=0.0)
        space = ActionSpace(
            args.action_horizon,
            32,
            model_action_statistics(data.train, args.action_horizon),
            data.statistics["proprio"],
        )
        batcher = Batcher(space, PromptTokenizer.train([e.instruction for e in data.train], 512, 16), data.cameras)
        spec = ImageSpec(width=w, height=h)
        n = 10
        with BatchStream(
            data.train,
            cameras=data.cameras,
            spec=spec,
            horizon=args.action_horizon,
            batch_size=args.batch_size,
            seed=0,
            num_workers=args.num_workers,
            prefetch=2,
        ) as stream:
            batcher.training(next(stream)[1])
            t0 = time.perf_counter()
            for _ in range(n):
                batcher.training(next(stream)[1])
            per_batch = (time.perf_counter() - t0) / n
    return {
        "pipeline_source": "640x480 JPEG episodes",
        "pipeline_workers": args.num_workers,
        "pipeline_batch_s": per_batch,
        "pipeline_samples_per_s": args.batch_size / per_batch,
        "pipeline_headroom": step_s / per_batch,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=("tiny", "pi0"))
    p.add_argument("--depth-override", type=int, default=0, help="layers in every stack (0: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 (pi0), 8 (tiny)")
    p.add_argument("--image-size", default=None, help="default: 224x224 (pi0), 64x64 (tiny)")
    p.add_argument("--cameras", type=int, default=1)
    p.add_argument("--action-horizon", type=int, default=10)
    p.add_argument("--lora-rank", type=int, default=None, help="default: 16 (pi0), 0 (tiny)")
    p.add_argument("--no-remat", dest="remat", action="store_false", help="keep activations (more memory)")
    p.add_argument("--freeze-vision", action="store_true")
    p.add_argument("--precision", choices=("auto", "fp32"), default="auto")
    p.add_argument("--steps", type=int, default=5, help="timed steps after compile")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--no-pipeline", action="store_true", help="skip the data pipeline measurement")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    pi0 = args.preset == "pi0"
    args.batch_size = args.batch_size or (32 if pi0 else 8)
    args.image_size = args.image_size or ("224x224" if pi0 else "64x64")
    args.lora_rank = (16 if pi0 else 0) if args.lora_rank is None else args.lora_rank
    if not pi0 and args.remat:
        args.remat = False  # tiny: nothing to save

    result = model_bench(args)
    if not args.no_pipeline:
        result.update(pipeline_bench(args, result["train_step_s"]))
    gb = lambda b: f"{b / 2**30:.2f} GiB" if b else "n/a"  # noqa: E731
    print(
        f"openpi {result['preset']}{' depth ' + str(args.depth_override) if args.depth_override else ''} on "
        f"{result['device']} ({result['dtype']}), {result['params_total'] / 1e6:.1f}M params, "
        f"{result['params_trained'] / 1e6:.2f}M trained (LoRA rank {result['lora_rank']})"
    )
    print(
        f"  train step: {result['train_step_s'] * 1e3:.1f} ms at batch {args.batch_size} "
        f"({result['samples_per_s']:.1f} samples/s), compile {result['train_compile_s']:.1f} s"
    )
    print(
        f"  inference: {result['infer_chunk_s'] * 1e3:.1f} ms per chunk of {args.action_horizon} "
        f"(10 Euler steps, batch 1)"
    )
    print(f"  peak device memory: {gb(result['peak_device_bytes'])}; host RSS peak {gb(result['peak_host_rss_bytes'])}")
    if "pipeline_headroom" in result:
        print(
            f"  data pipeline: {result['pipeline_samples_per_s']:.0f} samples/s with {args.num_workers} workers, "
            f"headroom x{result['pipeline_headroom']:.1f} over the train step"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
