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

from crane_x7_vla.backends.openvla.prompt import IMAGE_POSITIONS
from crane_x7_vla.cli.args import ArgumentParser, folder
from crane_x7_vla.messages import clip
from crane_x7_vla.preprocess import DELTA_ARM_ABSOLUTE_GRIPPER, REPRESENTATIONS
from crane_x7_vla.training.config import BACKEND_DEFAULTS, BACKENDS, ConfigError, TrainConfig, load_yaml

S = argparse.SUPPRESS
_D = TrainConfig()


def _both(key: str) -> str:
    return " / ".join(str(BACKEND_DEFAULTS[b][key]) for b in BACKENDS)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The `train` flags. Defaults are NOT set here (they are shown in the help text), so a
    flag the user did not give can be told apart from one that repeats a default."""
    p.add_argument("--backend", choices=BACKENDS, required=True, help="model family to fine-tune")
    p.add_argument("--config", metavar="FILE.yaml", default=S,
                   help="settings file (keys as the flags, e.g. batch_size: 8); flags override it")
    g = p.add_argument_group("data")
    g.add_argument("--data-root", metavar="PATH", default=S, help=f"episode directory (default: {_D.data_root})")
    g.add_argument("--instruction", metavar="TEXT", default=S,
                   help=f"instruction for episodes that have none (default: '{_D.instruction}')")
    g.add_argument("--image-size", metavar="WxH", default=S, help=f"model input size (default: {_D.image_size})")
    g.add_argument("--crop-scale", type=float, default=S,
                   help=f"image area kept by the random crop; centre crop at inference (default: {_D.crop_scale})")
    g.add_argument("--color-jitter", type=float, default=S,
                   help=f"brightness/contrast jitter, 0 = off (default: {_D.color_jitter})")
    g.add_argument("--cameras", nargs="+", metavar="NAME", default=S,
                   help="cameras fed to the model, in order (default: every camera the episodes share)")
    g.add_argument("--val-ratio", type=float, default=S,
                   help=f"share of episodes held out for validation (default: {_D.val_ratio})")
    g.add_argument("--noop-threshold", type=float, metavar="RAD", default=S,
                   help="leave out of training the no-op steps, whose action moves no joint by more than RAD "
                        "from the current state (waiting at the start, pauses, holding at the goal); "
                        "0 keeps every step (default: 0; 0.002 for the openvla 'tiny' preset)")
    g.add_argument("--action-label-sigma", type=float, metavar="BINS", default=S,
                   help="openvla: train each action token against a Gaussian of this width (in bins) over the "
                        "neighbouring bins instead of the one bin, so a near miss costs less than a far one; "
                        "0 = one-hot, as OpenVLA (default: 0; 2 for the 'tiny' preset)")
    g.add_argument("--num-workers", type=int, default=S,
                   help=f"threads preparing batches ahead of the trainer (default: {_D.num_workers})")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=S,
                   help=f"samples per step and process (default: {_both('batch_size')} for openvla / openpi)")
    g.add_argument("--num-epochs", type=int, default=S, help=f"passes over the training episodes (default: {_D.num_epochs})")
    g.add_argument("--max-steps", type=int, default=S,
                   help="optimizer steps; when given, replaces --num-epochs (default: from --num-epochs)")
    g.add_argument("--learning-rate", type=float, default=S,
                   help=f"peak learning rate (default: {_both('learning_rate')} for openvla / openpi)")
    g.add_argument("--lr-scheduler", choices=("cosine", "linear", "constant"), default=S,
                   help=f"decay after warmup (default: {_D.lr_scheduler})")
    g.add_argument("--warmup-ratio", type=float, default=S,
                   help=f"share of steps with a linear warmup (default: {_D.warmup_ratio})")
    g.add_argument("--weight-decay", type=float, default=S, help=f"AdamW weight decay (default: {_D.weight_decay})")
    g.add_argument("--max-grad-norm", type=float, default=S,
                   help=f"gradient clipping, 0 = off (default: {_D.max_grad_norm})")
    g.add_argument("--grad-accumulation-steps", type=int, default=S,
                   help=f"batches per optimizer step (default: {_D.grad_accumulation_steps})")
    g.add_argument("--gradient-checkpointing", action="store_true", default=S,
                   help="recompute activations to save memory (default: off)")
    g.add_argument("--seed", type=int, default=S, help=f"seed for split, order, augmentation, init (default: {_D.seed})")
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME|PATH|HUB_ID", default=S,
                   help=f"base model: a preset ('tiny' runs on CPU), a local path or a hub id "
                        f"(default: {_both('model')} for openvla / openpi)")
    g.add_argument("--use-lora", action=argparse.BooleanOptionalAction, default=S,
                   help="train LoRA adapters on all linear layers instead of all weights (default: on)")
    g.add_argument("--lora-rank", type=int, default=S, help=f"LoRA rank (default: {_D.lora_rank})")
    g.add_argument("--lora-alpha", type=int, default=S, help=f"LoRA alpha (default: {_D.lora_alpha})")
    g.add_argument("--lora-dropout", type=float, default=S, help=f"LoRA dropout (default: {_D.lora_dropout})")
    g.add_argument("--merge-lora", action="store_true", default=S,
                   help="also write LoRA-merged full weights to checkpoint-final/merged (default: off)")
    g.add_argument("--action-horizon", type=int, default=S,
                   help="actions predicted per call, a chunk of future steps (default: "
                        f"{BACKEND_DEFAULTS['openpi']['action_horizon']} for openpi; 1 for openvla as OpenVLA-7B, "
                        "which then writes 8 tokens per step of the chunk)")
    g.add_argument("--action-representation", choices=REPRESENTATIONS, default=S,
                   help="what the model predicts: absolute joint targets, or the arm joints as deltas from the "
                        "current state with the gripper absolute (delta statistics are computed when training "
                        "starts and stored in the checkpoint) (default: absolute for openvla models, "
                        f"{DELTA_ARM_ABSOLUTE_GRIPPER} for the openvla 'tiny' preset and for openpi)")
    g.add_argument("--state-in-prompt", action=argparse.BooleanOptionalAction, default=S,
                   help="openvla: put the current joint state into the prompt as 8 tokens, discretised like the "
                        "actions ('In: What action should the robot take to ...?\\nState: <8 tokens>\\nOut:') "
                        "(default: off, as OpenVLA-7B was trained; on for the 'tiny' preset)")
    g.add_argument("--image-position", choices=IMAGE_POSITIONS, default=S,
                   help="openvla, Llava-family models: where the image tokens go in the prompt, before the text "
                        "(as Llava models are trained) or after the instruction's question, so that the picture "
                        "is read knowing what the instruction names (default: first; after_instruction for the "
                        "'tiny' preset)")
    g.add_argument("--normalize-gripper", action=argparse.BooleanOptionalAction, default=S,
                   help="openvla: normalise the gripper with the dataset's q01/q99 like the arm joints; with "
                        "--no-normalize-gripper it is binned in its own units (radians, clipped to [-1, 1]), "
                        "as OpenVLA's normalisation mask leaves a gripper already in [0, 1]; recorded in the "
                        "checkpoint (default: on)")
    g.add_argument("--freeze-vision", action="store_true", default=S,
                   help="keep the image encoder as the base model has it (a pretrained one, e.g. from "
                        "`crane-x7-vla pretrain`); only the projector and language model learn (default: off)")
    g.add_argument("--goal-tokens", action=argparse.BooleanOptionalAction, default=S,
                   help="openvla: before its actions the model writes the goal point, where the hand will be "
                        "at the next grasp, release or the episode's end (x, y, z in the arm's base frame, 3 "
                        "tokens); computed from the recorded joint states (default: off, as OpenVLA-7B was "
                        "trained)")
    g.add_argument("--goal-before-state", action=argparse.BooleanOptionalAction, default=S,
                   help="openvla with goal tokens and the state in the prompt: write the goal point before "
                        "the state tokens are read, so it comes from the picture and the instruction only "
                        "(every demonstration starts from its own jittered pose, and a goal read off the state "
                        "is memorised per episode) (default: on)")
    g.add_argument("--goal-scenes", type=int, metavar="N", default=S,
                   help="openvla with goal tokens: also train the goal tokens on N simulated pictures of "
                        "--goal-scenes-task (no demonstration; the label is the named cube's place), a small "
                        f"stand-in for a pretrained model's knowledge of where things are (default: {_D.goal_scenes})")
    g.add_argument("--goal-scenes-task", metavar="TASK", default=S,
                   help=f"the simulated task the --goal-scenes pictures show (default: {_D.goal_scenes_task})")
    g.add_argument("--goal-scenes-alone", type=float, metavar="SHARE", default=S,
                   help="share of the --goal-scenes pictures that show the named cube alone (the others out "
                        "of sight): reading where a cube is pays off before choosing among several by colour "
                        f"does (default: {_D.goal_scenes_alone})")
    g.add_argument("--goal-scenes-near", type=float, metavar="SHARE", default=S,
                   help="share of the --goal-scenes pictures with the hand a few cm from a cube (the named one "
                        "or another): the goal is the named cube wherever the hand is, and not where the hand "
                        f"has come to (default: {_D.goal_scenes_near})")
    g.add_argument("--goal-label-sigma", type=float, metavar="BINS", default=S,
                   help="openvla: the --action-label-sigma of the goal tokens (their bins are 3 mm apart; a "
                        "wider Gaussian gives a goal point 2 cm off partial credit) (default: as "
                        "--action-label-sigma)")
    g.add_argument("--goal-warmup-steps", type=int, metavar="N", default=S,
                   help="openvla: the first N steps train on the --goal-scenes pictures only (where the named "
                        "cube is), before the demonstrations join in (default: 0)")
    g.add_argument("--goal-warmup-lr", type=float, metavar="LR", default=S,
                   help="constant learning rate of the --goal-warmup-steps; the schedule of --learning-rate "
                        "(with its own warm-up) starts after them (default: --learning-rate)")
    g.add_argument("--attn-implementation", metavar="NAME", default=S,
                   help="attention kernel, e.g. flash_attention_2, sdpa, eager (default: the model's)")
    g.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=S,
                   help=f"weights/activations: auto = bf16 on GPU, fp32 on CPU (default: {_D.precision})")
    g.add_argument("--device", default=S, help=f"auto, cpu, cuda or cuda:N (default: {_D.device})")
    g = p.add_argument_group("output")
    g.add_argument("--experiment-name", metavar="NAME", default=S, help="run name (default: crane_x7_{backend})")
    g.add_argument("--output-dir", metavar="PATH", default=S,
                   help="where checkpoints and logs go (default: /workspace/outputs/{experiment_name})")
    g.add_argument("--save-steps", type=int, default=S,
                   help=f"write checkpoint-N every N optimizer steps (default: {_D.save_steps})")
    g.add_argument("--logging-steps", type=int, default=S, help=f"log metrics every N steps (default: {_D.logging_steps})")
    g.add_argument("--eval-steps", type=int, default=S,
                   help=f"validation metrics every N steps, 0 = at the end only (default: {_D.eval_steps})")
    g.add_argument("--eval-samples", type=int, default=S,
                   help=f"samples per split for validation metrics (default: {_D.eval_samples})")
    g.add_argument("--use-wandb", action="store_true", default=S,
                   help="also log to Weights & Biases (offline without an API key) (default: off)")
    g.add_argument("--wandb-project", default=S, help=f"W&B project (default: {_D.wandb_project})")
    g.add_argument("--wandb-entity", default=S, help="W&B entity (default: your default entity)")
    g.add_argument("--resume-from-checkpoint", metavar="PATH", default=S,
                   help="continue a run exactly from its checkpoint-N directory (default: none)")


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
