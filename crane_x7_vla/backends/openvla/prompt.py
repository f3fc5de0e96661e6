"""The OpenVLA prompt, optionally with the robot's joint state, and where the picture goes.

Where the image tokens sit matters to a language model trained from scratch. With the
picture first (as Llava-family models are trained) the model reads the picture before it
knows which object the instruction names, and to answer it has to carry the colour word
along several tokens and then look it up among the picture's tokens: the tiny preset never
learned that look-up (pointing at the named cube stayed at chance, 14.2 pixels, after 2,000
steps). With the picture after the instruction every picture token can check itself against
the words already read, and the same training reaches 2.2 pixels. Pretrained models keep
the layout they were trained with.
"""

from __future__ import annotations

TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
# With --state-in-prompt the 8 state tokens go between these two parts.
STATE_TEMPLATE = ("In: What action should the robot take to {instruction}?\nState:", "\nOut:")
# With goal tokens written before the state (ActionCodec.goal_before_state) the goal point
# comes right after the picture, and the state tokens only after it, between these parts:
#   ... to {instruction}?\nGoal: <3 goal tokens> \nState: <8 state tokens> \nOut: <actions>
# A causal model then cannot read the goal off the joint state: every demonstration starts
# from its own jittered pose, so the state names the episode and with it the goal (the
# model memorised the training layouts' goals that way, and missed held-out ones by 10 cm).
# The goal has to come from the picture and the instruction, as at deployment.
GOAL_FIRST_TEMPLATE = ("In: What action should the robot take to {instruction}?\nGoal:", "\nState:", "\nOut:")


# --image-position: where the image tokens go in a Llava-family prompt
IMAGE_FIRST = "first"  # <s> <image>... In: What action ...?\nOut:  (as Llava models are trained)
IMAGE_AFTER_INSTRUCTION = "after_instruction"  # <s> In: What action ...? <image>... \nOut:
IMAGE_POSITIONS = (IMAGE_FIRST, IMAGE_AFTER_INSTRUCTION)


def _clean(instruction: str) -> str:
    """The instruction as OpenVLA's data pipeline writes it into the prompt: lower-cased as a
    whole, nothing else changed."""
    return str(instruction).lower()


def openvla_prompt(instruction: str) -> str:
    """'In: What action should the robot take to {instruction}?\\nOut:' (the instruction
    lower-cased, as OpenVLA was trained)."""
    return TEMPLATE.format(instruction=_clean(instruction))


def state_prompt_parts(instruction: str) -> tuple[str, str]:
    """The text before and after the state tokens:
    'In: What action should the robot take to {instruction}?\\nState:' <8 tokens> '\\nOut:'."""
    head, tail = STATE_TEMPLATE
    return head.format(instruction=_clean(instruction)), tail


def goal_first_prompt(instruction: str) -> str:
    """'In: What action should the robot take to {instruction}?\nGoal:' (then the goal tokens,
    GOAL_FIRST_TEMPLATE[1], the state tokens, GOAL_FIRST_TEMPLATE[2] and the actions)."""
    return GOAL_FIRST_TEMPLATE[0].format(instruction=_clean(instruction))


def split_at_question(instruction: str, with_state: bool, goal_first: bool = False) -> tuple[str, str]:
    """The prompt cut after its question mark, where IMAGE_AFTER_INSTRUCTION puts the picture:
    ('In: What action should the robot take to {instruction}?', '\nGoal:', '\nState:' or '\nOut:')."""
    if goal_first:
        text = goal_first_prompt(instruction)
    else:
        text = state_prompt_parts(instruction)[0] if with_state else openvla_prompt(instruction)
    question, rest = text.rsplit("?\n", 1)
    return question + "?", "\n" + rest
