"""The guides show commands that work: every documented command line is checked against the
real parsers, launch files, node parameters and benchmark scripts; the training flag table
matches the parser and its defaults; the Japanese guide covers the same ground as the English one.

Commands are taken from fenced code blocks of README.md, docs/ja/README.md and docs/*.md
(docs/docker.md's `docker compose` lines are checked by tests/docker).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from crane_x7_vla import cli as main_cli
from crane_x7_vla.training import cli as train_cli

from .launch_files import launch_arguments

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
README_JA = ROOT / "docs" / "ja" / "README.md"
GUIDES = [README, README_JA]
DOCS = [README, README_JA, *sorted((ROOT / "docs").glob("*.md"))]
BACKENDS = ("openvla", "openpi")
QUICK_START = (
    "bash scripts/setup.sh && .venv/bin/crane-x7-vla demo",
    "bash scripts/setup.sh && bash scripts/test.sh",
)
SEPARATORS = {"&&", "||", ";", "|"}


# ---- extracting commands ------------------------------------------------------------------------


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```([\w-]*)[ \t]*\n(.*?)^```", text, re.M | re.S)


def command_lines(text: str, languages=("bash", "sh", "shell", "console", "")) -> list[str]:
    """Lines of the code blocks (continuation lines joined, comments removed)."""
    out = []
    for lang, body in code_blocks(text):
        if lang not in languages:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                out.append(" ".join(line.split()))
    return out


def segments(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at &&, ||, ;, |)."""
    tokens = shlex.split(line, comments=True)
    parts, cur = [], []
    for tok in tokens:
        if tok in SEPARATORS:
            parts.append(cur)
            cur = []
        else:
            cur.append(tok)
    parts.append(cur)
    return [p for p in parts if p]


def placeholders(args: list[str]) -> list[str]:
    """`...` stands for more flags; `<thing>` for a value."""
    return [re.sub(r"^<[^>]+>$", "x", a) for a in args if a != "..."]


def cli_invocations(line: str) -> list[tuple[str, list[str]]]:
    """('main' | 'train', argv) for each call of `crane-x7-vla` or the training module."""
    if "crane-x7-vla" not in line and "crane_x7_vla.training.cli" not in line:
        return []
    found = []
    for seg in segments(line):
        for i, tok in enumerate(seg):
            if Path(tok).name == "crane-x7-vla":
                found.append(("main", placeholders(seg[i + 1 :])))
                break
            if tok == "-m" and i + 1 < len(seg) and seg[i + 1] == "crane_x7_vla.training.cli":
                found.append(("train", placeholders(seg[i + 2 :])))
                break
    return found


def documented(path: Path):
    """(line, kind, argv) of every CLI call in the file's code blocks."""
    return [(line, kind, argv) for line in command_lines(path.read_text()) for kind, argv in cli_invocations(line)]


# ---- checking one command -----------------------------------------------------------------------


def parse(kind: str, argv: list[str], where: str):
    parser = main_cli.build_parser() if kind == "main" else train_cli.build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0:  # --help
            return None
        raise AssertionError(f"{where}\n  is rejected by the parser: {err.getvalue().strip()}") from None


def check_cli(kind: str, argv: list[str], where: str, tmp: Path) -> None:
    ns = parse(kind, argv, where)
    if ns is None or ns.command != "train":
        return
    # A documented train command must also pass the settings checks (contradictions, ranges).
    if getattr(ns, "config", None) and not Path(ns.config).is_absolute():
        ns.config = str(ROOT / ns.config)  # the documented settings file must exist in the repository
    if getattr(ns, "resume_from_checkpoint", None):
        ns.resume_from_checkpoint = str(tmp)
    try:
        train_cli.config_from_args(ns)
    except Exception as exc:  # ConfigError and friends
        raise AssertionError(f"{where}\n  fails the training settings check: {exc}") from None


def console_scripts() -> dict[str, str]:
    """{console script: module holding its code}; a node's script goes through
    crane_x7_vla.ros.entry, which names the node's module."""
    from crane_x7_vla.ros import entry

    text = (ROOT / "setup.py").read_text()
    return {script: getattr(entry, func).node_module if module == entry.__name__ else module
            for script, module, func in re.findall(r'"([\w-]+) = ([\w.]+):(\w+)"', text)}


def declared_parameters(module: str) -> set[str]:
    src = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    return set(re.findall(r'\bp\(\s*"(\w+)"', src))


NODE_MODULES = {
    "data_logger": "crane_x7_vla.ros.data_logger",
    "vla_inference_node": "crane_x7_vla.ros.inference_node",
    "crane_x7_sim": "crane_x7_vla.ros.sim_node",
    "teleop_relay": "crane_x7_vla.ros.teleop_relay",
}


def check_ros(seg: list[str], where: str) -> None:
    if seg[:2] == ["ros2", "launch"]:
        assert seg[2] == "crane_x7_vla", f"{where}: package {seg[2]}"
        known = launch_arguments(seg[3])
        for arg in seg[4:]:
            name = arg.split(":=")[0]
            assert ":=" in arg and name in known, (
                f"{where}\n  '{name}' is not an argument of {seg[3]} ({sorted(known)})"
            )
    elif seg[:2] == ["ros2", "run"]:
        scripts = console_scripts()
        assert seg[2] == "crane_x7_vla" and seg[3] in scripts, f"{where}: no executable {seg[3]}"
        params = declared_parameters(scripts[seg[3]])
        for i, tok in enumerate(seg):
            if tok == "-p":
                name = seg[i + 1].split(":=")[0]
                assert name in params, f"{where}\n  {seg[3]} declares no parameter '{name}'"
    elif seg[:3] == ["ros2", "service", "call"]:
        node, _, service = seg[3].strip("/").partition("/")
        if node in NODE_MODULES:
            src = (ROOT / (NODE_MODULES[node].replace(".", "/") + ".py")).read_text()
            assert f'"~/{service}"' in src, f"{where}\n  {node} offers no service {service}"


def check_bench(seg: list[str], where: str) -> None:
    script = next((t for t in seg if t.startswith("bench/")), None)
    if script is None:
        return
    path = ROOT / script
    assert path.is_file(), f"{where}: no {script}"
    src = path.read_text()
    for tok in seg:
        if tok.startswith("--"):
            flag = tok.split("=")[0]
            assert f'"{flag}"' in src, f"{where}\n  {script} has no option {flag}"


def check_line(line: str, where: str, tmp: Path) -> int:
    """Check every known command of a line; returns how many were checked."""
    n = 0
    for kind, argv in cli_invocations(line):
        check_cli(kind, argv, f"{where}: {line}", tmp)
        n += 1
    if "ros2 " in line or "bench/" in line:
        for seg in segments(line):
            if seg[0] == "ros2":
                check_ros(seg, f"{where}: {line}")
                n += 1
            elif any(t.startswith("bench/") for t in seg):
                check_bench(seg, f"{where}: {line}")
                n += 1
    return n


# ---- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_are_accepted(doc, tmp_path):
    checked = 0
    for line in command_lines(doc.read_text()):
        checked += check_line(line, doc.relative_to(ROOT).as_posix(), tmp_path)
    if doc in GUIDES:
        assert checked >= 40, f"{doc}: only {checked} commands found; is the guide complete?"


def test_every_subcommand_is_documented():
    """Each `crane-x7-vla` sub-command (and dataset sub-command) appears in both guides."""
    parser = main_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names = set(sub.choices)
    dataset = next(a for a in sub.choices["dataset"]._actions if isinstance(a, argparse._SubParsersAction))
    for guide in GUIDES:
        used = {argv[0] for _, kind, argv in documented(guide) if kind == "main" and argv}
        assert names <= used, f"{guide}: no example of {sorted(names - used)}"
        used_ds = {argv[1] for _, kind, argv in documented(guide) if kind == "main" and argv[:1] == ["dataset"]}
        text = guide.read_text()
        missing = {n for n in dataset.choices if n not in used_ds and f"dataset {n}" not in text}
        assert not missing, f"{guide}: dataset sub-commands not documented: {sorted(missing)}"


def test_checker_rejects_wrong_commands(tmp_path):
    with pytest.raises(AssertionError, match="rejected"):
        check_line("crane-x7-vla dataset info data/ --no-such-flag", "x", tmp_path)
    with pytest.raises(AssertionError, match="rejected"):
        check_line("crane-x7-vla no-such-command", "x", tmp_path)
    with pytest.raises(AssertionError, match="rejected"):
        check_line("python -m crane_x7_vla.training.cli train --backend openvla --batch-size many", "x", tmp_path)
    with pytest.raises(AssertionError, match="settings check"):
        check_line(
            "torchrun --nproc_per_node=2 -m crane_x7_vla.training.cli train --backend openpi --action-label-sigma 2",
            "x",
            tmp_path,
        )
    with pytest.raises(AssertionError, match="settings check"):
        check_line("crane-x7-vla train --backend openpi --no-use-lora --lora-rank 8", "x", tmp_path)
    with pytest.raises(AssertionError, match="not an argument"):
        check_line("ros2 launch crane_x7_vla vla_inference.launch.py model:=x", "x", tmp_path)
    with pytest.raises(AssertionError, match="no launch file"):
        check_line("ros2 launch crane_x7_vla no_such.launch.py", "x", tmp_path)
    with pytest.raises(AssertionError, match="declares no parameter"):
        check_line("ros2 run crane_x7_vla data_logger --ros-args -p no_such:=1", "x", tmp_path)
    with pytest.raises(AssertionError, match="offers no service"):
        check_line("ros2 service call /data_logger/save std_srvs/srv/Trigger", "x", tmp_path)
    with pytest.raises(AssertionError, match="has no option"):
        check_line(".venv/bin/python bench/episode_io.py --no-such 1", "x", tmp_path)
    # and accepts good ones, including `&&` chains and --help
    assert check_line("bash scripts/setup.sh && .venv/bin/crane-x7-vla demo --backend openpi", "x", tmp_path) == 1
    assert check_line("python -m crane_x7_vla.training.cli train --help", "x", tmp_path) == 1


# ---- the flag table -------------------------------------------------------------------------------


def render(value) -> str:
    if value is None:
        return "—"
    if value is True:
        return "on"
    if value is False:
        return "off"
    return str(value)


def flag_table(text: str) -> list[list[str]]:
    """Rows (cells) of the table whose header names the two backends."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1:3] == ["openvla", "openpi"]:
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))])
            return rows
    raise AssertionError("no table with the columns | flag | openvla | openpi | ...")


def train_actions() -> dict[str, argparse.Action]:
    parser = train_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.option_strings[0]: a for a in sub.choices["train"]._actions if a.option_strings and a.dest != "help"}


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: str(p.relative_to(ROOT)))
def test_flag_table_matches_the_parser_and_its_defaults(guide):
    actions = train_actions()
    parser = train_cli.build_parser()
    resolved = {b: train_cli.config_from_args(parser.parse_args(["train", "--backend", b])) for b in BACKENDS}
    rows = flag_table(guide.read_text())
    seen = set()
    for cells in rows:
        flags = re.findall(r"--[a-z0-9-]+", cells[0])
        assert flags, f"{guide}: row without a flag: {cells}"
        flag = flags[0]
        assert flag in actions, f"{guide}: {flag} is not a flag of train"
        assert flag not in seen, f"{guide}: {flag} listed twice"
        seen.add(flag)
        action = actions[flag]
        assert set(flags) <= set(action.option_strings), f"{guide}: {cells[0]} names other flags"
        for col, backend in ((1, "openvla"), (2, "openpi")):
            expected = render(getattr(resolved[backend], action.dest, None))
            shown = cells[col].replace("`", "").strip()
            assert shown == expected, f"{guide}: {flag} default for {backend} is {expected!r}, the table says {shown!r}"
    missing = sorted(set(actions) - seen)
    assert not missing, f"{guide}: flags missing from the table: {missing}"


def test_flag_table_is_the_generated_one():
    """README.md's table is flag_table()'s, made from the settings' field definitions."""
    from crane_x7_vla.training.config import flag_table

    lines = README.read_text().splitlines()
    start = lines.index("| flag | openvla | openpi | meaning |")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    expected = flag_table().splitlines()
    assert lines[start:end] == expected, (
        "README.md's train flag table differs from the settings' definitions; replace it with the output of\n"
        "  python -c 'from crane_x7_vla.training.config import flag_table; print(flag_table(), end=\"\")'"
    )


# ---- English and Japanese guides ---------------------------------------------------------------------


def headings(text: str, level: int) -> list[str]:
    body = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.findall(rf"^{'#' * level} (.+)$", body, re.M)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_quick_start_commands_in_both_guides():
    for guide in GUIDES:
        lines = command_lines(guide.read_text())
        for cmd in QUICK_START:
            assert cmd in lines, f"{guide}: quick start command missing: {cmd}"
    # the English guide keeps exactly these two set-up commands in its Quick start section
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert command_lines(section) == list(QUICK_START)


def test_japanese_guide_has_the_same_commands_and_sections():
    en, ja = README.read_text(), README_JA.read_text()
    en_cmds, ja_cmds = command_lines(en, ("bash",)), command_lines(ja, ("bash",))
    assert len(en_cmds) >= 40
    assert ja_cmds == en_cmds, (
        "the Japanese guide's commands differ from the English guide's:\n"
        f"  only in English: {[c for c in en_cmds if c not in ja_cmds]}\n"
        f"  only in Japanese: {[c for c in ja_cmds if c not in en_cmds]}"
    )
    for level in (2, 3):
        assert len(headings(ja, level)) == len(headings(en, level)), f"different number of level-{level} sections"
    assert len(flag_table(ja)) == len(flag_table(en))
    assert re.search(r"[\u3040-\u30ff]", ja), "docs/ja/README.md is not written in Japanese"
    # the numbers given (benchmarks, estimates) are the same in both
    nums = lambda t: sorted(re.findall(r"\b\d+(?:\.\d+)?(?= ?(?:GB|steps/s|samples/s|×|倍))", t))  # noqa: E731
    assert nums(ja) == nums(en)


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_anchors_resolve(guide):
    text = guide.read_text()
    anchors = {slug(h) for level in (1, 2, 3, 4) for h in headings(text, level)}
    links = re.findall(r"\]\(([^)\s]+)\)", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        target, _, anchor = link.partition("#")
        if not target:
            assert anchor in anchors, f"{guide}: no section for #{anchor}"
        else:
            assert (guide.parent / target).exists(), f"{guide}: broken link {link}"


def test_both_guides_link_the_same_documents():
    def targets(guide):
        text = guide.read_text()
        return {
            (guide.parent / link.partition("#")[0]).resolve()
            for link in re.findall(r"\]\(([^)#\s][^)\s]*)\)", text)
            if not link.startswith("http")
        }

    en = targets(README) - {README_JA.resolve()}
    ja = targets(README_JA) - {README.resolve()}
    assert en == ja
    assert (ROOT / "docs" / "docker.md").resolve() in en and (ROOT / "docs" / "deploy.md").resolve() in en


# ---- the smaller flag tables (demo, collect) ------------------------------------------------------


def subcommand_tables(text: str):
    """(argv of the command the table documents, rows) for every | flag | default | meaning | table:
    the command is the nearest `crane-x7-vla` call in a code block before the table."""
    out, last = [], None
    lines = text.splitlines()
    in_block = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            calls = [argv for kind, argv in cli_invocations(line) if kind == "main"] if line.strip() else []
            if calls:
                last = calls[-1]
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells in (["flag", "default", "meaning"], ["フラグ", "既定値", "意味"]):
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            out.append((last, rows))
    return out


def default_shown(action: argparse.Action, cell: str) -> bool:
    value, cell = action.default, cell.replace("`", "").strip()
    if value is None or isinstance(value, bool):
        return True  # described in words ("per backend", "random", "(required)")
    if isinstance(value, tuple):
        return "x".join(map(str, value)) in cell
    if isinstance(value, (int, float)):
        try:
            return float(cell.split()[0]) == float(value)
        except ValueError:
            return False
    return str(value) in cell


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: str(p.relative_to(ROOT)))
def test_subcommand_flag_tables_match_their_parsers(guide):
    tables = subcommand_tables(guide.read_text())
    assert len(tables) >= 2
    parser = main_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for argv, rows in tables:
        assert argv, f"{guide}: a flag table without a command before it"
        sp = sub.choices[argv[0]]
        actions = {a.option_strings[0]: a for a in sp._actions if a.option_strings and a.dest != "help"}
        listed = {}
        for cells in rows:
            flag = re.findall(r"--[a-z0-9-]+", cells[0])[0]
            assert flag in actions, f"{guide}: {flag} is not a flag of `crane-x7-vla {argv[0]}`"
            listed[flag] = cells[1]
        assert set(listed) == set(actions), f"{guide}: `{argv[0]}` table lacks {sorted(set(actions) - set(listed))}"
        for flag, cell in listed.items():
            assert default_shown(actions[flag], cell), (
                f"{guide}: `{argv[0]} {flag}` default is {actions[flag].default!r}, the table says {cell!r}"
            )
