"""`crane-x7-vla train --backend {openvla,openpi} [flags]` and `crane-x7-vla merge-lora CHECKPOINT`.

The same parser answers `python -m crane_x7_vla.training.cli train ...` (crane_x7_vla/training/cli.py)
and, for several GPUs, `torchrun --nproc_per_node=N -m crane_x7_vla.training.cli train ...` (OpenVLA).

Settings come from (later wins): built-in defaults, per-backend defaults, `--config
FILE.yaml`, flags. Only flags actually given override the config file. An unknown flag,
a bad value or a contradiction (e.g. --lora-rank with --no-use-lora) is an error.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from crane_x7_vla.cli.args import ArgumentParser, folder
from crane_x7_vla.messages import clip
from crane_x7_vla.training.config import BACKENDS, ConfigError, TrainConfig, add_arguments, load_yaml


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The `train` flags, one per setting of every backend (training/config.py: add_arguments)."""
    add_arguments(p)


_LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "merge_lora")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults < --config file < given flags, then check contradictions."""
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config")}
    settings: dict = {}
    if getattr(args, "config", None):
        settings.update(load_yaml(args.config))
        if "backend" in settings and settings["backend"] != args.backend:
            raise ConfigError(f"--config {args.config} is for backend '{settings['backend']}', "
                              f"but --backend is '{args.backend}'")
    settings.update(given)
    if settings.get("use_lora") is False:
        clash = [k for k in _LORA_KEYS if k in settings and not (k == "merge_lora" and not settings[k])]
        if clash:
            raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in clash)} contradicts --no-use-lora")
    return TrainConfig.from_dict(settings, where="settings").resolved()


def run_train(args: argparse.Namespace):
    cfg = config_from_args(args)
    trainer = importlib.import_module(f"crane_x7_vla.backends.{cfg.backend}.trainer")
    final = trainer.train(cfg)
    print(f"checkpoint: {final}")
    return 0


def run_merge(args: argparse.Namespace):
    from crane_x7_vla.checkpoint_contract import CheckpointError, read_policy_config

    config = read_policy_config(args.checkpoint)
    if config["backend"] not in BACKENDS:
        raise CheckpointError(f"{args.checkpoint} holds a '{clip(config['backend'])}' policy; LoRA adapters come "
                              f"from training with --backend {' or '.join(BACKENDS)}")
    backend = importlib.import_module(f"crane_x7_vla.backends.{config['backend']}.trainer")
    if not hasattr(backend, "merge_lora"):
        raise ConfigError(f"the {config['backend']} backend has no LoRA merge step")
    out = backend.merge_lora(args.checkpoint, args.output)
    print(f"merged weights: {out}")
    return 0


def register(subparsers) -> None:
    """Add `train` and `merge-lora` to a `crane-x7-vla` style sub-command parser."""
    p = subparsers.add_parser(
        "train", help="fine-tune a VLA policy on recorded episodes",
        description="Fine-tune a Vision-Language-Action policy on CRANE-X7 episodes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m crane_x7_vla.training.cli train --backend openvla --data-root data/ --batch-size 8\n"
               "  python -m crane_x7_vla.training.cli train --backend openvla --model tiny --image-size 64x64 "
               "--max-steps 200\n"
               "  torchrun --nproc_per_node=2 -m crane_x7_vla.training.cli train --backend openvla ...",
    )
    add_train_arguments(p)
    p.set_defaults(func=run_train)
    m = subparsers.add_parser("merge-lora", help="fold a LoRA checkpoint's adapters into full weights")
    m.add_argument("checkpoint", type=folder, help="checkpoint directory (e.g. .../checkpoint-final)")
    m.add_argument("--output", type=folder, default=None, help="where to write (default: CHECKPOINT/merged)")
    m.set_defaults(func=run_merge)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m crane_x7_vla.training.cli",
                                     description="Train VLA policies for the CRANE-X7.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(sub)
    return parser


def main(argv=None) -> int:
    from crane_x7_vla.cli.main import run_command

    parser = build_parser()
    return run_command(parser, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
