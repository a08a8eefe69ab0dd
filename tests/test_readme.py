"""The README and docs/*.md are tested: every ```python block runs as a program (in a fresh
interpreter, in a temporary directory, warnings as errors), every `python -m servers` command
in a ```sh block passes `--check`, every other command names something that exists, and the
README's test command is the one CI runs.

Markers (an HTML comment on the line before a fence):
- `<!-- not-run -->`: a python block that is intentionally not run (keep these rare);
- `<!-- file: NAME -->`: also save the block as NAME, next to where commands run.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from servers import cli

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OTHER_PROGRAMS = {"nc", "curl"}  # shown to the reader, not run here
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*(not-run|file:\s*(\S+))\s*-->$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    code: str
    marker: str | None = None
    file_name: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with the marker comment preceding each."""
    found = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence or not fence[1]:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        previous = next((lines[i].strip() for i in range(index - 1, -1, -1)
                         if lines[i].strip()), "")
        marker = MARKER.match(previous)
        found.append(Block(path, index + 1, fence[1], "\n".join(lines[index + 1:end]) + "\n",
                           marker[1] if marker else None, marker[2] if marker else None))
        index = end + 1
    return found


ALL_BLOCKS = [block for path in DOCUMENTS for block in blocks_of(path)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.language == "python" and b.marker != "not-run"]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.language in ("sh", "shell", "bash", "console")]


def shell_commands(block: Block) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped,
    `&&` chains split."""
    text = block.code.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        words = shlex.split(line.removeprefix("$ "), comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:cut])
            words = words[cut + 1:]
    return commands


def write_file_blocks(document: Path, directory: Path) -> None:
    for block in blocks_of(document):
        if block.file_name:
            (directory / block.file_name).write_text(block.code)


def test_the_documents_have_blocks_of_each_kind() -> None:
    assert len([b for b in PYTHON_BLOCKS if b.path.name == "README.md"]) >= 6
    assert SHELL_BLOCKS and all(b.language in ("python", "sh", "text", "mermaid")
                                for b in ALL_BLOCKS), "fence code blocks as python, sh or text"


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    write_file_blocks(block.path, tmp_path)
    program = tmp_path / "snippet.py"
    program.write_text(block.code)
    result = subprocess.run([sys.executable, "-W", "error", str(program)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    for bad in ("Traceback", "Warning", "Exception"):
        assert bad not in result.stderr, result.stderr


def command_cases() -> list[tuple[Block, list[str]]]:
    return [(block, words) for block in SHELL_BLOCKS for words in shell_commands(block)]


@pytest.mark.parametrize(("block", "words"), command_cases(),
                         ids=[f"{b.id}:{' '.join(w)[:40]}" for b, w in command_cases()])
def test_shell_command_refers_to_what_exists(block: Block, words: list[str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    program, args = words[0], words[1:]
    if program in OTHER_PROGRAMS:
        return
    assert program == "python", f"unknown program {program!r} in {block.id}"
    if args[:2] == ["-m", "servers"]:
        write_file_blocks(block.path, tmp_path)
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))
        before = set(sys.modules)
        try:
            if "--help" in args:
                with pytest.raises(SystemExit) as exit_info:
                    cli.main(args[2:])
                assert exit_info.value.code == 0
            else:
                checked = [*private_addresses(args[2:], tmp_path), "--check"]
                assert cli.main(checked) == 0, capsys.readouterr().err
        finally:
            for name in set(sys.modules) - before:
                del sys.modules[name]
    elif args[:1] == ["-m"]:
        assert args[1] in ("pip", "coverage", "pytest"), f"unknown module in {block.id}"
    elif args[:1] == ["-c"]:  # a one-line client; tests/examples run them against the example
        compile(args[1], block.id, "exec")
    else:
        assert (ROOT / args[0]).is_file(), f"{args[0]} (in {block.id}) does not exist"
        result = subprocess.run([sys.executable, args[0], "--help"], cwd=ROOT,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr


def private_addresses(args: list[str], directory: Path) -> list[str]:
    """`--check` binds every address: make the documented ones free ones (port 0, socket files
    in `directory`), so that the test does not depend on what else runs on the machine."""
    rewritten = []
    for previous, arg in zip(["", *args], args):
        if previous in ("--bind", "-b"):
            arg = re.sub(r"^((?:tcp|udp)://.*):\d+$", r"\1:0", arg)
            arg = re.sub(r"^(unix|unixgram):(?://)?/.*/", rf"\1:{directory}/", arg)
        rewritten.append(arg)
    return rewritten


def normalised(command: str) -> str:
    """A command with quietness flags, continuations and spacing made irrelevant."""
    command = command.replace("\\\n", " ")
    return " ".join(word for word in command.split() if word != "-q")


def test_the_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    [command] = [line for line in readme.splitlines()
                 if "coverage run" in line and line.startswith("python")]
    ci = normalised((ROOT / ".ci" / "run").read_text())
    for step in command.split("&&"):
        assert normalised(step) in ci, f"README step {step.strip()!r} is not in .ci/run"
    assert '"test"' in (ROOT / "pyproject.toml").read_text().replace("test =", '"test" =')


def test_the_test_extra_installs_every_tool_the_tests_run() -> None:
    """The README's test command installs `.[test]`: a tool missing there would make its test
    skip, or fail, on a fresh machine."""
    extra = re.search(r"^test = \[(.*)\]\s*$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert extra is not None
    names = {re.split(r"[<>=\[ ]", item.strip().strip('"'))[0]
             for item in extra[1].split(",") if item.strip()}
    assert {"pytest", "pytest-timeout", "coverage", "mypy"} <= names, names


def test_the_readme_has_its_sections() -> None:
    headings = re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), re.M)
    for wanted in ("Two commands", "Thirty seconds with each mode", "Which mode when",
                   "The command line", "Migrating from socketserver", "Limits and defaults",
                   "Benchmarks", "Documentation"):
        assert wanted in headings


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_relative_links_resolve(document: Path) -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", document.read_text()):
        if "://" not in target:
            assert (document.parent / target).exists(), f"{document.name} links to {target}"


def public_names() -> list[tuple[str, str]]:
    """(where, name) for every name in the packages' `__all__` and every public member a
    public class defines itself."""
    import handlers
    import reactor
    import reactor.testing
    import servers
    import servers.builtin

    found = []
    for module in (reactor, reactor.testing, handlers, servers, servers.builtin, cli):
        for name in module.__all__:
            found.append((module.__name__, name))
            value = getattr(module, name)
            if isinstance(value, type) and value.__module__.split(".")[0] == \
                    module.__name__.split(".")[0]:
                found += [(f"{module.__name__}.{name}", member) for member in vars(value)
                          if not member.startswith("_")]
    return found


def test_the_reference_names_every_public_name() -> None:
    text = (ROOT / "docs" / "reference.md").read_text()
    missing = sorted({f"{where}.{name}" for where, name in public_names()
                      if not re.search(rf"\b{re.escape(name)}\b", text)})
    assert not missing, f"docs/reference.md does not mention: {missing}"


@pytest.mark.slow
def test_the_readme_snippets_and_the_example_type_check(tmp_path: Path) -> None:
    """The README's python blocks and examples/multiserver.py pass `mypy --strict` (mypy is
    in the test extra, so the README's test command runs this)."""
    paths = [str(ROOT / "examples" / "multiserver.py")]
    for block in PYTHON_BLOCKS:
        if block.path.name == "README.md":
            paths.append(str(tmp_path / f"readme_{block.line}.py"))
            Path(paths[-1]).write_text(block.code)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--no-incremental", "--scripts-are-modules", *paths],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"MYPYPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
