"""Actions per second of OpenVLA's two action heads on the same model, side by side.

    .venv/bin/python bench/openvla_action_heads.py [--horizons 1 8] [--calls 20] [--threads 1] [--json out.json]

One model of the `tiny` preset (OpenVLA's architecture at ~1.7M parameters, random weights,
64x64 pictures; `--width-multiplier` widens its language model) decodes a chunk of H actions
from the same prompt and picture both ways:

    tokens       greedy decoding of 8 * H action tokens, one forward pass each (KV cache),
                 as `OpenVLAPolicy` decodes a `--action-head tokens` checkpoint
    parallel-l1  one forward pass over the prompt and 8 * H action query positions and the
                 MLP head, as it decodes a `--action-head parallel-l1` checkpoint

Both run what the policy runs after the picture is prepared (the prompt built, the model
called, the actions turned into absolute joint targets). Figures: median ms per chunk,
actions/s (H / median) and the ratio parallel / tokens. The machine's load average is
printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crane_x7_vla import robot  # noqa: E402
from crane_x7_vla.backends.openvla import decode  # noqa: E402
from crane_x7_vla.backends.openvla.action_tokenizer import ActionCodec  # noqa: E402
from crane_x7_vla.backends.openvla.inputs import ModelInputs  # noqa: E402
from crane_x7_vla.backends.openvla.model import (PRESETS, ParallelActionHead, ParallelDecoder, load_vla,  # noqa: E402
                                                 materialize_preset)

STATS = {k: {"q01": [-1.0] * 8, "q99": [1.0] * 8, "mean": [0.0] * 8, "std": [1.0] * 8, "min": [-1.0] * 8,
             "max": [1.0] * 8} for k in ("action", "proprio")}


def timed(fn, calls: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--horizons", type=int, nargs="+", default=[1, 8], help="chunk lengths H to time")
    ap.add_argument("--calls", type=int, default=20, help="timed calls per head and horizon")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--width-multiplier", type=int, default=1, help="the language model's width times this")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        preset = PRESETS["tiny"]
        saved = dict(preset["text"])
        if args.width_multiplier > 1:
            for key in ("hidden_size", "intermediate_size"):
                preset["text"][key] = saved[key] * args.width_multiplier
        try:
            src = materialize_preset("tiny", Path(tmp) / "tiny", image_size=(64, 64))
        finally:
            preset["text"].clear()
            preset["text"].update(saved)
        vla = load_vla(str(src), image_size=(64, 64))
    vla.model.eval()
    codec = ActionCodec(vla.vocab_size, STATS, state_in_prompt=True)
    builder = ModelInputs(vla, codec, ["primary"], "cpu")
    rng = np.random.default_rng(0)
    pix = builder.pixels({"primary": rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)})
    state = robot.home_state()[None]
    instruction = ["reach the green cube"]
    n_params = sum(p.numel() for p in vla.model.parameters())
    rows = []
    for h in args.horizons:
        head = ParallelActionHead(vla.model.config.text_config.hidden_size, h)
        decoder = ParallelDecoder(vla.model, head).eval()

        def tokens(h=h):
            with torch.no_grad():
                batch = builder.prompts(instruction, state)
                ids = decode.generate_action_ids(vla.model, vla, batch, pix, codec.n_tokens(h), codec.first_id)
                return codec.decode(ids.numpy(), state)

        def parallel(decoder=decoder, h=h):
            return decode.parallel_actions(decoder, builder, instruction, state, pix, h)

        assert tokens().shape == parallel().shape == (1, h, robot.ACTION_DIM)
        t_tok, t_par = timed(tokens, args.calls), timed(parallel, args.calls)
        rows.append({"horizon": h, "tokens_ms": t_tok * 1e3, "parallel_ms": t_par * 1e3,
                     "tokens_actions_per_s": h / t_tok, "parallel_actions_per_s": h / t_par,
                     "ratio": t_tok / t_par})
    load = os.getloadavg()
    print(f"model: tiny preset, {n_params / 1e6:.2f}M parameters (language model width "
          f"{vla.model.config.text_config.hidden_size}), CPU, {args.threads} thread(s), {os.cpu_count()} cores, "
          f"load average {load[0]:.2f} {load[1]:.2f}")
    print(f"{'H':>3} {'tokens ms':>10} {'parallel ms':>12} {'tokens act/s':>13} {'parallel act/s':>15} {'ratio':>7}")
    for r in rows:
        print(f"{r['horizon']:>3} {r['tokens_ms']:>10.2f} {r['parallel_ms']:>12.2f} {r['tokens_actions_per_s']:>13.1f} "
              f"{r['parallel_actions_per_s']:>15.1f} {r['ratio']:>6.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"params_m": n_params / 1e6, "threads": args.threads,
                                               "load_average": load, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
