"""The docs check: the README stays a front door, every relative link in README.md and docs/ reaches
a file (and a heading, for `#anchor` links), and every command a fenced shell block shows names a
real command with options that command has.

Inputs: README.md, docs/**/*.md, the `trm` click group (`trm_cli.main`), tools/*.py, the runner's
argument parser. Output: one line per problem, naming the page and line, so a failure says what to
fix. Static apart from importing the click group and the runner's parser (no torch import).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300
SHELL_FENCES = {"", "sh", "bash", "shell", "console"}
CHAINS = {"&&", "||", ";", "|"}


def doc_pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


# --- reading markdown -----------------------------------------------------------------------------


def _fence(line: str) -> re.Match | None:
    return re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)


def prose_and_blocks(text: str) -> tuple[list[tuple[int, str]], list[tuple[str, list[tuple[int, str]]]]]:
    """(prose lines, fenced blocks as (info string, lines)); line numbers are 1-based."""
    prose: list[tuple[int, str]] = []
    blocks: list[tuple[str, list[tuple[int, str]]]] = []
    current: list[tuple[int, str]] | None = None
    for n, line in enumerate(text.splitlines(), 1):
        m = _fence(line)
        if current is None and m:
            current = []
            blocks.append((m.group(2).lower(), current))
        elif current is not None and m and not m.group(2):
            current = None
        elif current is not None:
            current.append((n, line))
        else:
            prose.append((n, line))
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    prose, _ = prose_and_blocks(page.read_text(encoding="utf-8"))
    for _, line in prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")
    return out


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def link_problems(pages: list[Path]) -> list[str]:
    problems = []
    for page in pages:
        prose, _ = prose_and_blocks(page.read_text(encoding="utf-8"))
        for n, line in prose:
            for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                dest = (page.parent / path) if path else page
                where = f"{page.name}:{n}: link {target!r}"
                if not dest.exists():
                    problems.append(f"{where}: no file {dest}")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    problems.append(f"{where}: no heading #{anchor} in {dest.name}")
    return problems


# --- reading the commands a page shows ------------------------------------------------------------


def shown_commands(page: Path) -> list[tuple[int, list[str]]]:
    """Every simple command in the page's fenced shell blocks, as tokens, with its line number:
    continuation lines joined, comments dropped, `a && b; c` split into its commands."""
    out = []
    _, blocks = prose_and_blocks(page.read_text(encoding="utf-8"))
    for info, lines in blocks:
        if info not in SHELL_FENCES:
            continue
        joined: list[tuple[int, str]] = []
        pending: tuple[int, str] | None = None
        for n, line in lines:
            if pending is not None:
                n, line = pending[0], pending[1] + " " + line.strip()
            if line.rstrip().endswith("\\"):
                pending = (n, line.rstrip()[:-1])
                continue
            pending = None
            joined.append((n, line))
        for n, line in joined:
            line = re.sub(r"^\s*\$\s+", "", line)
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:  # an unbalanced quote in a block of output, not a command
                tokens = line.split("#", 1)[0].split()
            command: list[str] = []
            for tok in [*tokens, ";"]:
                if tok in CHAINS:
                    if command:
                        out.append((n, command))
                    command = []
                else:
                    command.append(tok)
    return out


def option_of(token: str) -> str | None:
    m = re.match(r"^\[?(--?[A-Za-z][\w-]*)(?:=.*)?\]?$", token)
    return m.group(1) if m else None


def _click_options(cmd: click.Command) -> set[str]:
    opts = {"--help"}
    for p in cmd.params:
        opts.update(p.opts)
        opts.update(p.secondary_opts)
    return opts


def click_problems(args: list[str], shown: str, where: str) -> list[str]:
    from trm_cli import main

    cmd: click.Command = main
    rest = list(args)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith(("-", ".", "<", "[")):
        name = rest.pop(0)
        sub = cmd.commands.get(name)
        if sub is None:
            return [f"{where}: `{shown} {name}`: no such command (known: {', '.join(sorted(cmd.commands))})"]
        cmd, shown = sub, f"{shown} {name}"
    known = _click_options(cmd)
    return [f"{where}: `{shown}` has no option {opt}"
            for opt in filter(None, map(option_of, rest)) if opt not in known]


def _argparse_options(source: str) -> set[str]:
    """The option strings a script's `add_argument(...)` calls declare, read from its source."""
    opts = {"--help", "-h"}
    for call in re.findall(r"add_argument\(\s*((?:[\"']-[^\"']*[\"']\s*,?\s*)+)", source):
        opts.update(re.findall(r"[\"'](-[^\"']*)[\"']", call))
    if "BooleanOptionalAction" in source:
        opts.update("--no-" + o[2:] for o in list(opts) if o.startswith("--"))
    return opts


def tool_problems(script: str, args: list[str], where: str, repo: Path) -> list[str]:
    path = repo / script
    if not path.is_file():
        return [f"{where}: no file {script}"]
    source = path.read_text(encoding="utf-8")
    delegated = re.search(r"main\(args=\[\"([\w-]+)\"", source)  # a thin wrapper of a `trm` command
    if delegated:
        return click_problems([delegated.group(1), *args], script, where)
    if "add_argument(" in source:
        known = _argparse_options(source)
        return [f"{where}: `{script}` has no option {opt}"
                for opt in filter(None, map(option_of, args)) if opt not in known]
    return []


def module_problems(module: str, args: list[str], where: str) -> list[str]:
    if module == "trm_cli":
        return click_problems(args, "python -m trm_cli", where)
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        found = None
    if found is None:
        return [f"{where}: no module {module}"]
    if not module.startswith(("submission.", "bundle.")):
        return []
    make = getattr(importlib.import_module(module), "parser", None)  # the runner builds its parser apart
    if not callable(make):
        return []
    known = set(make()._option_string_actions)
    return [f"{where}: `python -m {module}` has no option {opt}"
            for opt in filter(None, map(option_of, args)) if opt not in known]


def command_problems(pages: list[Path], repo: Path = ROOT) -> list[str]:
    problems = []
    for page in pages:
        for n, tokens in shown_commands(page):
            where = f"{page.name}:{n}"
            while tokens and re.match(r"^[A-Za-z_]\w*=", tokens[0]):  # VAR=value before the command
                tokens = tokens[1:]
            if not tokens:
                continue
            head, args = tokens[0], tokens[1:]
            if head == "trm" or head.endswith("/bin/trm"):
                problems += click_problems(args, "trm", where)
            elif "-m" in tokens and tokens.index("-m") + 1 < len(tokens) and \
                    tokens[tokens.index("-m") + 1] == "trm_cli":  # torchrun ... -m trm_cli ...
                problems += module_problems("trm_cli", tokens[tokens.index("-m") + 2:], where)
            elif re.match(r"^(.*/)?python3?$", head) and args:
                if args[0] == "-m" and len(args) > 1:
                    problems += module_problems(args[1], args[2:], where)
                elif args[0].startswith("tools/"):
                    problems += tool_problems(args[0], args[1:], where, repo)
    return problems


# --- the checks -----------------------------------------------------------------------------------


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move material into docs/"


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line for line in ci.splitlines() if "pytest" in line and "venv" in line)
    _, blocks = prose_and_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert any(line.strip() == command.strip() for _, lines in blocks for _, line in lines), \
        f"README.md should show .ci/run's test command verbatim: {command}"


def test_every_relative_link_resolves():
    assert link_problems(doc_pages()) == []


def test_every_shown_command_exists_with_its_options():
    assert command_problems(doc_pages()) == []


def test_the_check_catches_a_broken_link_and_a_wrong_option(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md#a-section) [fine too](#page) `[in code](nowhere.md)`\n"
        "[gone](missing.md) [no heading](other.md#no-such-section) ![img](pic.png)\n\n"
        "```\n"
        "trm solve --checkpoint pretrained/demo --data x.json --steps 10 \\\n"
        "    --no-such-option 3 --out runs/solve\n"
        "trm no-such-command --data x\n"
        "trm tasks check x.json --max-side 10   # a sub-group's command\n"
        "trm evaluate ... --out runs/eval\n"
        "trm repair submission.json --challenges c.json [-o fixed.json]\n"
        "python tools/dry_run.py --budget 300 --bogus\n"
        "python tools/no_such_tool.py\n"
        "python -m submission.run --views-target 8 --no-such-flag\n"
        "torchrun --nproc-per-node 4 -m trm_cli posttrain --steps 5 --wrong\n"
        "```\n",
        encoding="utf-8",
    )
    links = link_problems([page])
    assert len(links) == 3 and all("page.md:4" in p for p in links)
    assert any("missing.md" in p for p in links) and any("#no-such-section" in p for p in links)
    assert any("pic.png" in p for p in links)

    commands = command_problems([page])
    assert any("page.md:7" in p and "--no-such-option" in p for p in commands)
    assert any("no-such-command" in p and "no such command" in p for p in commands)
    assert any("tools/dry_run.py" in p and "--bogus" in p for p in commands)
    assert any("no file tools/no_such_tool.py" in p for p in commands)
    assert any("submission.run" in p and "--no-such-flag" in p for p in commands)
    assert any("posttrain" in p and "--wrong" in p for p in commands)
    assert len(commands) == 6, commands  # the valid lines (tasks check, evaluate ..., repair [-o]) pass


@pytest.mark.parametrize("heading, anchor", [
    ("The two flows", "the-two-flows"),
    ("Predict, vote, score", "predict-vote-score"),
    ("See a run: the HTML report", "see-a-run-the-html-report"),
    ("`trm solve` and flow 1", "trm-solve-and-flow-1"),
])
def test_slug_is_githubs(heading, anchor):
    assert slug(heading) == anchor
