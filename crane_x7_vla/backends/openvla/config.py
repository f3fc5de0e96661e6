"""`OpenVLAConfig`: the settings of an OpenVLA training run (the shared ones and its own)."""

from __future__ import annotations

from dataclasses import dataclass

from crane_x7_vla.backends.openvla.prompt import IMAGE_FIRST, IMAGE_POSITIONS
from crane_x7_vla.training.config import ConfigError, TrainConfig, setting

TOKEN_HEAD = "tokens"  # the language model writes 8 action tokens per chunk step, one per forward pass
PARALLEL_L1 = "parallel-l1"  # one forward pass over a chunk of action query positions, an MLP regresses them
ACTION_HEADS = (TOKEN_HEAD, PARALLEL_L1)
#: `--strategy` (backends/openvla/distributed.py)
STRATEGIES = ("ddp", "fsdp")


@dataclass
class OpenVLAConfig(TrainConfig):
    backend: str = setting("openvla", "model family to fine-tune (required)", group="", choices=("openvla", "openpi"))
    action_label_sigma: float | None = setting(
        None,
        "train each action token against a Gaussian of this width (in bins) over the neighbouring bins, so a "
        "near miss costs less than a far one; 0 = one-hot as OpenVLA; `2` for the `tiny` preset",
        group="data",
        metavar="BINS",
        per_backend={"openvla": 0.0},
    )
    state_in_prompt: bool | None = setting(
        None,
        "the joint state as 8 action-bin tokens in the prompt (on for the `tiny` preset)",
        negatable=True,
        per_backend={"openvla": False},
    )
    image_position: str | None = setting(
        None,
        "for Llava-family models and the `tiny` preset (a picture marker in its config.json), the image tokens "
        "before the prompt's text (as Llava models are trained) or right after the instruction's question, so the "
        "picture is read knowing which object is named (`after_instruction` for the `tiny` preset)",
        choices=IMAGE_POSITIONS,
        per_backend={"openvla": IMAGE_FIRST},
    )
    goal_tokens: bool = setting(
        False,
        "before its actions the model writes the goal point, where the hand will be at the next grasp, "
        "release or the episode's end (x, y, z in the arm's base frame as 3 tokens, from the recorded joint states "
        "by forward kinematics)",
        negatable=True,
    )
    goal_before_state: bool = setting(
        True,
        "with goal tokens and the state in the prompt: the goal point is written before the state tokens are "
        "read, so it comes from the picture and the instruction only (every demonstration starts from its own "
        "slightly jittered pose, so a goal read off the state is memorised per episode); checkpoints from before "
        "this flag keep the state first",
        negatable=True,
    )
    normalize_gripper: bool = setting(
        True,
        "normalise the gripper with the dataset's q01/q99 like the arm joints; off leaves it in its own units, "
        "clipped to [-1, 1] (OpenVLA's normalisation mask; the CRANE-X7's gripper is 0.35..1.05 rad); recorded in "
        "the checkpoint",
        negatable=True,
    )
    goal_label_sigma: float | None = setting(
        None,
        "the label width of the goal tokens, unset = `--action-label-sigma` (their bins are 3 mm apart; `8` "
        "gives a goal point 2 cm off partial credit)",
        metavar="BINS",
    )
    goal_warmup_steps: int = setting(
        0,
        "with goal scenes: the first N steps train on the goal scenes only (where the named cube is), before the "
        "demonstrations and their actions join in",
        metavar="N",
    )
    goal_warmup_lr: float | None = setting(
        None,
        "constant learning rate of the goal warm-up, unset = `--learning-rate`; the schedule of "
        "`--learning-rate` (with its own warm-up) starts after it",
        metavar="LR",
    )
    action_head: str = setting(
        TOKEN_HEAD,
        "how actions are decoded: `tokens`, 8 action tokens per chunk step written one forward pass each (as "
        "OpenVLA, for its own tools); `parallel-l1`, the whole chunk in one forward pass over learned action "
        "query positions that attend to each other both ways, an MLP regressing the normalised values, trained "
        "with an L1 loss (docs/fast_actions.md); recorded in the checkpoint",
        choices=ACTION_HEADS,
    )
    strategy: str = setting(
        "ddp",
        "how the processes of a torchrun launch share the model: `ddp` (each holds all of it) or `fsdp` "
        "(PyTorch FSDP2: weights, gradients and optimizer state sharded over the processes; bf16 compute on "
        "fp32 weights under bf16 precision); see docs/distributed.md",
        group="optimisation",
        choices=STRATEGIES,
    )
    attn_implementation: str | None = setting(
        None, "attention kernel, e.g. `flash_attention_2`, `sdpa`, `eager`; not set: the model's own", metavar="NAME"
    )

    def validate(self) -> None:
        super().validate()
        if self.backend != "openvla":
            raise ConfigError(f"the openvla settings were given --backend {self.backend}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)} (got '{self.strategy}')")
        self.positive("action_label_sigma", allow_zero=True)
        self.positive("goal_warmup_steps", allow_zero=True)
        for name in ("goal_label_sigma", "goal_warmup_lr"):  # None: as --action-label-sigma / --learning-rate
            if getattr(self, name) is not None:
                self.positive(name, allow_zero=name == "goal_label_sigma")
        if self.image_position is not None and self.image_position not in IMAGE_POSITIONS:
            raise ConfigError(
                f"--image-position must be one of {', '.join(IMAGE_POSITIONS)} (got '{self.image_position}')"
            )
        if self.goal_warmup_steps and not self.goal_scenes:
            raise ConfigError("--goal-warmup-steps trains on the goal scenes first: it needs --goal-scenes N")
        if self.goal_warmup_steps and self.max_steps and self.goal_warmup_steps >= self.max_steps:
            raise ConfigError(
                f"--goal-warmup-steps ({self.goal_warmup_steps}) must be fewer than --max-steps "
                f"({self.max_steps}): the actions are learned after it"
            )
        if self.action_head not in ACTION_HEADS:
            raise ConfigError(f"--action-head must be one of {', '.join(ACTION_HEADS)} (got '{self.action_head}')")
        if self.action_head == PARALLEL_L1:
            if self.goal_tokens:
                raise ConfigError(f"--goal-tokens are written token by token; --action-head {PARALLEL_L1} "
                                  "decodes the actions alone: use --no-goal-tokens")
            if self.attn_implementation == "flash_attention_2":
                raise ConfigError(f"--action-head {PARALLEL_L1} attends both ways among its action positions, "
                                  "which flash_attention_2 cannot mask: use --attn-implementation sdpa or eager")
            if self.strategy == "fsdp":
                raise ConfigError(f"--action-head {PARALLEL_L1} trains with --strategy ddp (its head is not "
                                  "sharded by FSDP)")
        if self.goal_scenes and not self.goal_tokens:
            raise ConfigError("--goal-scenes teaches the goal tokens; it needs --goal-tokens")
