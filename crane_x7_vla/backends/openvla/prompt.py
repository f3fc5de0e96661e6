"""The OpenVLA prompt."""

from __future__ import annotations

TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"


def openvla_prompt(instruction: str) -> str:
    """'In: What action should the robot take to {instruction}?\\nOut:' (lower-cased first
    letter and no trailing full stop, as OpenVLA was trained)."""
    text = " ".join(str(instruction).split()).rstrip(".")
    if text[:1].isupper() and not text[1:2].isupper():
        text = text[0].lower() + text[1:]
    return TEMPLATE.format(instruction=text)
