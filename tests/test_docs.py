"""The README and docs/ cannot rot: their links resolve and their `mammut` commands parse.

Every `mammut fit|validate|test|predict ... --config configs/...` command in a fenced code block
runs in this process with `--print_config`, which parses the configs and the command line against
the code but builds nothing: no data, tokenizer or weights file is read (`init_from` is read when
the model is built). `--ckpt_path` is dropped, since restoring a run reads the checkpoint's
settings (mammut.resume); shell variables become a placeholder path.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO
from mammut.cli import main

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SUBCOMMANDS = ("fit", "validate", "test", "predict")
PLACEHOLDER = "/nonexistent/placeholder"


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def prose_lines(path: Path):
    """(line number, text) of the lines outside fenced code blocks."""
    fence = False
    for number, line in enumerate(path.read_text().split("\n"), 1):
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if not fence:
            yield number, line


def code_blocks(path: Path):
    """(line number, logical line) of fenced code blocks, with `\\` continuations joined."""
    fence, pending, start = False, "", 0
    for number, line in enumerate(path.read_text().split("\n"), 1):
        if line.lstrip().startswith("```"):
            fence, pending = not fence, ""
            continue
        if not fence:
            continue
        if not pending:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


# --- links -------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _, line in prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def relative_links():
    for page in PAGES:
        # Code blocks and inline code hold no links; a link's text may run over two lines.
        prose = INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", "x", m.group()),
                                "\n".join(line for _, line in prose_lines(page)))
        numbers = [number for number, _ in prose_lines(page)]
        for match in LINK.finditer(prose):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            number = numbers[prose.count("\n", 0, match.start(1))]
            yield pytest.param(page, target, id=f"{rel(page)}:{number}:{target}")


@pytest.mark.parametrize("page,target", list(relative_links()))
def test_relative_link_resolves(page, target):
    path_part, _, fragment = target.partition("#")
    destination = (page.parent / path_part).resolve() if path_part else page
    assert destination.exists(), f"{rel(page)} links to {target}, which does not exist"
    if fragment and destination.suffix == ".md":
        assert fragment in anchors(destination), \
            f"{rel(page)} links to {target}: {rel(destination)} has no heading with that anchor"


def test_links_are_found():
    found = {str(p.values[1]) for p in relative_links()}
    assert {"docs/pretraining.md", "docs/scaling.md", "docs/measurements.md"} <= found


# --- the front page ----------------------------------------------------------------------------

def test_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().split("\n")
    assert len(lines) - (lines[-1] == "") <= 250
    first = [line.strip() for line in lines[:20]]
    for command in ("make pretrain", "make test"):
        assert any(re.match(rf"^{command}(\s|$)", line) for line in first), f"`{command}` is not in the first 20 lines"


def test_readme_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


# --- commands ----------------------------------------------------------------------------------

SHELL_VARIABLE = re.compile(r"\$\([^)]*\)|\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*")


def mammut_arguments(line: str) -> list[str] | None:
    """The arguments after `mammut` (or `-m mammut.cli`) of a documented command, or None."""
    line = line.strip()
    if line.startswith("$ "):
        line = line[2:]
    try:
        tokens = shlex.split(SHELL_VARIABLE.sub(PLACEHOLDER, line), comments=True)
    except ValueError:  # unbalanced quotes: fail loudly where a command may be hidden
        if "mammut" in line:
            raise
        return None
    for i, token in enumerate(tokens[:-1]):
        if token.rsplit("/", 1)[-1] in ("mammut", "mammut.cli") and tokens[i + 1] in SUBCOMMANDS:
            args = tokens[i + 1:]
            if any(a.startswith("configs/") or a.startswith("--config=configs/") for a in args):
                return args
    return None


def without_ckpt_path(args: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return kept


def documented_commands():
    for page in PAGES:
        for number, line in code_blocks(page):
            args = mammut_arguments(line)
            if args is not None:
                yield pytest.param(args, id=f"{rel(page)}:{number}")


COMMANDS = list(documented_commands())


def test_commands_are_found():
    assert len(COMMANDS) >= 20
    assert {p.values[0][0] for p in COMMANDS} == set(SUBCOMMANDS)


@pytest.mark.parametrize("args", COMMANDS)
def test_documented_command_parses(args, capsys, monkeypatch):
    args = without_ckpt_path(args)
    if "--print_config" not in args:
        args.append("--print_config")
    monkeypatch.chdir(REPO)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code in (0, None), capsys.readouterr().err[-2000:]
    assert "class_path:" in capsys.readouterr().out
