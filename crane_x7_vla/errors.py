"""Errors a user can fix by changing a setting or a file.

`ConfigError` is the root of the family: a wrong command-line flag, YAML key or ROS
parameter, and (through `crane_x7_vla.checkpoint_contract.CheckpointError`) a checkpoint
that is missing, damaged or does not fit. Every message names the setting or file and says
why, in one line.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is missing, unknown, out of range or contradicts another one; the message says
    which and why."""
