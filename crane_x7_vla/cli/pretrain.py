"""`crane-x7-vla pretrain`: the pretraining stage of a tiny preset (backends/openvla/pretrain.py,
backends/openpi/pretrain.py).

    crane-x7-vla pretrain --out runs/tiny_base [--backend openvla --task reach --scenes 3000 --steps 1500]
    python -m crane_x7_vla.training.cli train --backend openvla --model runs/tiny_base ...

Renders scenes of the simulated task, trains the preset's vision tower to point at each
named object (then, with --answer-steps, the model to answer where each one is), prints the
held-out pointing errors and writes a local model directory that training loads like any
base model (with pretraining.json beside the weights).
"""

from __future__ import annotations

import argparse

from crane_x7_vla.cli.args import folder, image_size, non_negative_int, positive_float, positive_int, sim_task


def _run(args) -> int:
    """pretrain_tiny checks the flags (and the preset) before writing anything."""
    if args.backend == "openpi":
        from crane_x7_vla.backends.openpi.pretrain import pretrain_tiny
    else:
        from crane_x7_vla.backends.openvla.pretrain import pretrain_tiny

    pretrain_tiny(args.out, preset=args.preset, image_size=args.image_size, task=args.task,
                  scenes=args.scenes, steps=args.steps, answer_steps=args.answer_steps, batch_size=args.batch_size,
                  learning_rate=args.learning_rate, seed=args.seed)
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("pretrain", help="pretrain a tiny preset's vision on simulated scenes (base model)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=folder, required=True, help="model directory to write")
    p.add_argument("--backend", choices=("openvla", "openpi"), default="openvla",
                   help="policy family whose tiny preset is pretrained (default openvla)")
    p.add_argument("--preset", default="tiny", help="preset to build (default tiny)")
    p.add_argument("--image-size", type=image_size, default="64x64", help="model picture size WxH (default 64x64)")
    p.add_argument("--task", type=sim_task, default="reach",
                   help="simulated task whose scenes are rendered (default reach)")
    p.add_argument("--scenes", type=positive_int, default=3000, help="rendered training scenes (default 3000)")
    p.add_argument("--steps", type=positive_int, default=1500, help="training steps (default 1500)")
    p.add_argument("--answer-steps", type=non_negative_int, default=0,
                   help="then steps of the model answering the pointing questions: openvla with two location "
                        "tokens through the action prompt (a preset with the picture first leads in for the "
                        "first half with the colour as the prompt's last word); openpi as an action chunk "
                        "through the action expert (default 0; e.g. 2000)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="questions per step (default 32)")
    p.add_argument("--learning-rate", type=positive_float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the model and the scene draw (default 0)")
    p.set_defaults(func=_run)
    return p
