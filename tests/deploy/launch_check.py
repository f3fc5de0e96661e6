"""Static checks of ROS 2 launch files (the launch packages are not installable here).

`inspect_launch(path)` reads a launch file with `ast` and returns its declared arguments
and its Node actions (package, executable, parameter names, launch configurations used),
resolving module-level literal constants and dict comprehensions over them.
`node_parameters(module_path)` lists the parameters a node declares (msgs.declare calls
and the `p = lambda *a: msgs.declare(self, *a)` shorthand).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class NodeAction:
    package: str
    executable: str
    parameters: set[str] = field(default_factory=set)
    configurations: set[str] = field(default_factory=set)


@dataclass
class LaunchInfo:
    arguments: dict[str, str]  # name -> default
    nodes: list[NodeAction]
    configurations: set[str]  # every LaunchConfiguration name used anywhere


def _constants(tree: ast.Module) -> dict:
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                out[stmt.targets[0].id] = ast.literal_eval(stmt.value)
            except ValueError:
                pass
    return out


def _iterable(node, consts):
    if isinstance(node, ast.Name) and node.id in consts:
        return list(consts[node.id])
    return list(ast.literal_eval(node))


def _dict_keys(node, consts) -> set[str]:
    if isinstance(node, ast.Dict):
        keys = set()
        for k, v in zip(node.keys, node.values):
            if k is None:
                keys |= _dict_keys(v, consts)
            else:
                keys.add(ast.literal_eval(k))
        return keys
    if isinstance(node, ast.DictComp):
        gen = node.generators[0]
        return {str(x) for x in _iterable(gen.iter, consts)}
    raise ValueError(f"cannot read parameters from {ast.dump(node)[:80]}")


def _configs_in(node, consts) -> set[str]:
    """LaunchConfiguration names used under `node` (comprehension variables resolved)."""
    names = set()
    comps = {}
    for sub in ast.walk(node):
        if isinstance(sub, (ast.DictComp, ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            gen = sub.generators[0]
            if isinstance(gen.target, ast.Name):
                try:
                    comps[gen.target.id] = _iterable(gen.iter, consts)
                except ValueError:
                    pass
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and getattr(sub.func, "id", None) == "LaunchConfiguration" and sub.args:
            arg = sub.args[0]
            if isinstance(arg, ast.Constant):
                names.add(arg.value)
            elif isinstance(arg, ast.Name) and arg.id in comps:
                names |= {str(x) for x in comps[arg.id]}
            elif isinstance(arg, ast.Name):
                names.add(f"<unresolved {arg.id}>")
    return names


def inspect_launch(path: str | Path) -> LaunchInfo:
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    consts = _constants(tree)
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    if "generate_launch_description" not in names:
        raise AssertionError(f"{path}: no generate_launch_description()")
    arguments: dict[str, str] = {}
    nodes: list[NodeAction] = []
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        fname = getattr(call.func, "id", None)
        kw = {k.arg: k.value for k in call.keywords if k.arg}
        if fname == "DeclareLaunchArgument":
            first = call.args[0]
            if isinstance(first, ast.Constant):
                arguments[first.value] = ast.literal_eval(kw["default_value"]) if "default_value" in kw else None
            elif isinstance(first, ast.Name):  # for name, (default, text) in CONSTANT.items()
                for comp in (n for n in ast.walk(tree) if isinstance(n, ast.ListComp)):
                    if call in list(ast.walk(comp)):
                        it = comp.generators[0].iter
                        src = it.func.value if isinstance(it, ast.Call) else it
                        for name, value in consts[src.id].items():
                            arguments[name] = value[0] if isinstance(value, tuple) else value
        elif fname == "Node":
            params = set()
            for entry in getattr(kw.get("parameters"), "elts", []):
                params |= _dict_keys(entry, consts)
            nodes.append(NodeAction(ast.literal_eval(kw["package"]), ast.literal_eval(kw["executable"]),
                                    params, _configs_in(call, consts)))
    return LaunchInfo(arguments, nodes, _configs_in(tree, consts))


_DECLARE = re.compile(r"""(?:\bp|msgs\.declare\(self,)\(?\s*["']([A-Za-z_][\w.]*)["']""")


def node_parameters(module_path: str | Path) -> set[str]:
    return set(_DECLARE.findall(Path(module_path).read_text()))


def console_scripts(setup_py: str | Path) -> dict[str, str]:
    text = Path(setup_py).read_text()
    return dict(re.findall(r'"([\w-]+) = ([\w.]+):main"', text))
