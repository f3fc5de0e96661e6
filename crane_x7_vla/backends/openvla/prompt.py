"""The OpenVLA prompt, optionally with the robot's joint state."""

from __future__ import annotations

TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
# With --state-in-prompt the 8 state tokens go between these two parts.
STATE_TEMPLATE = ("In: What action should the robot take to {instruction}?\nState:", "\nOut:")


def _clean(instruction: str) -> str:
    text = " ".join(str(instruction).split()).rstrip(".")
    if text[:1].isupper() and not text[1:2].isupper():
        text = text[0].lower() + text[1:]
    return text


def openvla_prompt(instruction: str) -> str:
    """'In: What action should the robot take to {instruction}?\\nOut:' (lower-cased first
    letter and no trailing full stop, as OpenVLA was trained)."""
    return TEMPLATE.format(instruction=_clean(instruction))


def state_prompt_parts(instruction: str) -> tuple[str, str]:
    """The text before and after the state tokens:
    'In: What action should the robot take to {instruction}?\\nState:' <8 tokens> '\\nOut:'."""
    head, tail = STATE_TEMPLATE
    return head.format(instruction=_clean(instruction)), tail
