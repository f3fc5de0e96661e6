"""Typed launch arguments and essential nodes for the package's launch files.

A launch argument is text. launch_ros turns the text into a parameter by YAML rules unless
told the type: `rate:=10` becomes an INTEGER, `camera_name:=yes` a BOOL, and the nodes,
which declare DOUBLE or STRING parameters, refuse them. Every argument here carries its
type; `param()` hands the node exactly that type:

* float: `10` and `10.0` are both 10.0;
* int: `3` and `3.0` are both 3 (`3.5` is refused);
* bool: true/false (also 1/0, yes/no);
* list (of strings): `"['primary', 'wrist']"`, or `primary,wrist`, or a single `primary`;
* str: the text as typed (a serial number or "yes" stays a string); one pair of quotes
  around all of it is taken off, so `''` is the empty text and `"'0123'"` is 0123.

A value that does not fit ends the launch with one line naming the argument, before any
node has started (`declare()` adds that check after the declarations).

`essential(node)` ends the whole launch (exit code 1) when a node that the launch cannot
work without exits on its own, e.g. a logger refusing its parameters at start-up: the
other nodes then do not go on looking alive while nothing is recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import List

import yaml
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessExit
from launch.substitution import Substitution
from launch.substitutions import LaunchConfiguration
from launch.substitutions.substitution_failure import SubstitutionFailure
from launch_ros.parameter_descriptions import ParameterValue

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_TYPE_WORDS = {float: "a number", int: "a whole number", bool: "true or false", list: "a list", str: "text"}


@dataclass(frozen=True)
class Arg:
    """One launch argument: its default (as typed on the command line), meaning and type."""

    default: str
    description: str
    type: type = str

    def __post_init__(self) -> None:
        if self.type not in _TYPE_WORDS:
            raise TypeError(f"launch argument type must be one of {list(_TYPE_WORDS)}, got {self.type}")


def normalize(name: str, text: str, kind: type) -> str:
    """`text` of argument `name` rewritten so that launch_ros reads it as `kind`.

    Raises SubstitutionFailure with one line naming the argument when it does not fit.
    """
    value = text.strip()
    if kind is str:
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            return value[1:-1]
        return text
    try:
        if kind is float:
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError
            return repr(number)
        if kind is int:
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return str(int(number))
        if kind is bool:
            word = value.lower()
            if word in _TRUE:
                return "true"
            if word in _FALSE:
                return "false"
            raise ValueError
        return json.dumps(_as_list(value))
    except (ValueError, OverflowError, yaml.YAMLError) as exc:
        hint = {float: "10.0", int: "3", bool: "true", list: "\"['a', 'b']\""}[kind]
        raise SubstitutionFailure(
            f"launch argument {name}:={text!r} is not {_TYPE_WORDS[kind]} (e.g. {name}:={hint})"
            + (f": {exc}" if str(exc) else "")
        ) from None


def _as_list(value: str) -> list[str]:
    if value.startswith("["):
        items = yaml.safe_load(value)
        if not isinstance(items, list):
            raise ValueError("not a list")
        if any(isinstance(item, (list, dict)) for item in items):
            raise ValueError("the entries must be plain names")
        items = ["" if item is None else str(item) for item in items]
    else:
        items = [item.strip() for item in value.split(",")] if value else []
    # An empty STRING_ARRAY has no type in ROS 2; [''] stands for "none".
    return items or [""]


class _Typed(Substitution):
    """The value of launch configuration `name`, checked and normalized for `kind`."""

    def __init__(self, name: str, kind: type) -> None:
        super().__init__()
        self._name = name
        self._kind = kind
        self._configuration = LaunchConfiguration(name)

    def describe(self) -> str:
        return f"{self._kind.__name__}({self._configuration.describe()})"

    def perform(self, context) -> str:
        return normalize(self._name, self._configuration.perform(context), self._kind)


def declare(arguments: dict[str, Arg]) -> list:
    """DeclareLaunchArgument for each entry (its type named in the description), then an
    action that checks every value, so that a bad one stops the launch before any node."""

    def check(context):
        for name, arg in arguments.items():
            normalize(name, LaunchConfiguration(name).perform(context), arg.type)
        return None

    declared = [
        DeclareLaunchArgument(
            name, default_value=arg.default,
            description=arg.description if arg.type is str else f"{arg.description} [{arg.type.__name__}]",
        )
        for name, arg in arguments.items()
    ]
    return [*declared, OpaqueFunction(function=check)]


def param(name: str, arguments: dict[str, Arg]) -> ParameterValue:
    """The node parameter of launch argument `name`, typed as the argument."""
    kind = arguments[name].type
    return ParameterValue(_Typed(name, kind), value_type=List[str] if kind is list else kind)


def params(names, arguments: dict[str, Arg]) -> dict[str, ParameterValue]:
    """{name: param(name)} for several arguments passed under their own names."""
    return {name: param(name, arguments) for name in names}


def typed(name: str, arguments: dict[str, Arg]):
    """The checked text of launch argument `name` (for an included launch file's argument)."""
    return _Typed(name, arguments[name].type)


def essential(node) -> list:
    """[node, a handler that ends the launch when the node exits while the launch runs]."""

    def _ended(event, context):
        if context.is_shutdown:
            return None
        name = str(getattr(event.action, "node_name", None) or event.process_name)
        name = name.replace("<node_namespace_unspecified>", "")
        if event.returncode != 0:
            # Raised from an event handler, the error ends the launch with exit code 1.
            raise RuntimeError(
                f"{name} exited with code {event.returncode}; the launch cannot work without it "
                f"(its error is printed above)"
            )
        return [Shutdown(reason=f"{name} ended")]

    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_ended))]


class _YamlString(_Typed):
    """The text of launch argument `name` (as a str argument) as a double-quoted YAML string."""

    def __init__(self, name: str) -> None:
        super().__init__(name, str)

    def perform(self, context) -> str:
        return json.dumps(super().perform(context))


def string_parameter(parameter: str, name: str) -> list:
    """`ros_arguments` that give a node's STRING parameter the text of launch argument `name`.

    A parameter in a launch file's `parameters` reaches the node through a YAML file that
    launch_ros writes, and a text such as the RealSense serial 012345678912 is written there
    without quotes; ROS then reads it as a number and the node refuses it. `-p NAME:="TEXT"`
    keeps it text, with or without quotes typed around it.
    """
    return ["-p", [f"{parameter}:=", _YamlString(name)]]


def one_item_list(name: str) -> ParameterValue:
    """A STRING_ARRAY parameter holding the text of (str) launch argument `name` as its one entry."""
    return ParameterValue([[_Typed(name, str)]], value_type=List[str])
