"""Latency from an image arriving to the first command that uses it, through the real node.

    .venv/bin/python bench/inference_latency.py [--checkpoint DIR] [--seconds 20] [--json out.json]

The inference node runs as its own process over real DDS; this process publishes camera
images (640x480 rgb8 by default, 30 Hz) and joint states and receives the commands. The
node measures each stage of every inference and reports it in its diagnostics:

    image_wait   capture -> inference starts (DDS transport + waiting for the next inference slot)
    preprocess   ROS image -> RGB array(s) (+ the backend's image preparation when it reports it)
    model        policy.predict (for backends reporting it: the network alone)
    postprocess  chunk checks + hand-over to the executor
    publish      chunk ready -> first JointTrajectory that uses it leaves the node
    total        image capture -> that command

Without --checkpoint a mean-trajectory baseline (no network) shows the node's own overhead;
pass a tiny trained checkpoint (e.g. `crane-x7-vla train --backend openpi --model tiny ...`)
for model figures on this CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


from deploy_harness import Session, baseline_checkpoint, write_json

STAGES = ("image_wait_ms", "preprocess_ms", "model_ms", "postprocess_ms", "publish_ms", "image_to_command_ms")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="checkpoint directory (default: a mean-trajectory baseline)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement time after the first command")
    ap.add_argument("--inference-rate", type=float, default=10.0)
    ap.add_argument("--image-size", default="640x480")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.image_size.split("x"))
    ckpt = Path(args.checkpoint) if args.checkpoint else baseline_checkpoint()
    session = Session(image_size=(w, h))
    try:
        session.start_node(model_path=str(ckpt), device=args.device, control_rate=30.0,
                           inference_rate=args.inference_rate, autostart=True, use_gripper=False,
                           max_joint_velocity=1.0)
        session.wait_running(timeout=300)
        time.sleep(args.seconds)
        diag = session.node.diagnostics[-1]
    finally:
        session.close()
    latency = diag["latency_ms"]
    result = {
        "checkpoint": str(ckpt),
        "backend": "baseline (mean trajectory)" if not args.checkpoint else "from checkpoint",
        "image_size": args.image_size,
        "inferences": diag["counts"]["inferences"],
        "stages_ms": {k.removesuffix("_ms"): latency.get(k, {}) for k in STAGES},
    }
    print(f"image -> command latency ({result['inferences']} inferences, window of the last "
          f"{latency['model_ms'].get('n', 0)}), {args.image_size} images, checkpoint {ckpt}")
    print(f"{'stage':<20}{'p50 ms':>10}{'p99 ms':>10}")
    for k in STAGES:
        s = latency.get(k, {})
        name = "total (image->cmd)" if k == "image_to_command_ms" else k.removesuffix("_ms")
        print(f"{name:<20}{s.get('p50', float('nan')):>10.2f}{s.get('p99', float('nan')):>10.2f}")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
