"""Every command shown in README.md and docs/*.md is exercised, so the pages cannot drift from the code.

Each line of a ```bash block goes through `./run`, unless it is marked `# needs ...` (a request to a running server)
or belongs to a script for another machine (a block starting with `#!`). Every `./run`
command is checked against the real argument parser of what it runs (`naturelm`'s, the training script's
`TrlParser`, accelerate's launcher, uv's; a benchmark's parser rebuilt from its `add_argument` calls), the files it
names must exist, and a command that cannot run on a bare clone (the gated weights, a GPU, a cluster, your data) must
say so with a `# needs ...` comment, on its line or on a line above it in the same block. The cheap commands run:
the README's smoke inference as written, through `./run`; the tiny conversion and the reference scoring in process,
from a scratch folder beside `../shared`. ```python blocks are compiled.
"""

import argparse
import ast
import contextlib
import importlib.util
import io
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
NEEDS = re.compile(r"#.*\bneeds\b")
SEPARATORS = {";", "&", "&&", "|", "||", "(", ")", "));", "do", "then"}
ENV = re.compile(r"^[A-Za-z_]\w*=")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    body: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Command:
    block: Block
    line: int
    text: str  # the logical line as written (continuations joined)
    env: dict
    words: list  # after `./run`
    needs: str | None  # the `# needs ...` comment that covers it
    earlier: str  # every command before it on the same page: what it may read that they write

    def __str__(self) -> str:
        return f"{self.block.page.relative_to(ROOT)}:{self.line}"


def blocks(lang: str) -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match["lang"] == lang:
                found.append(Block(page, text[: match.start()].count("\n") + 2, lang, match["body"]))
    return found


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """(line number, text) with backslash continuations joined."""
    lines, current, start = [], "", None
    for number, raw in enumerate(block.body.splitlines(), block.line):
        start = number if start is None else start
        if raw.endswith("\\"):
            current += raw[:-1] + " "
            continue
        lines.append((start, current + raw))
        current, start = "", None
    return lines


def comment(line: str) -> str:
    """The part of a shell line from an unquoted `#` that starts a word."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[i:]
    return ""


def words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def commands() -> list[Command]:
    found, earlier = [], {}
    for block in blocks("bash"):
        block_needs = None
        for number, line in logical_lines(block):
            note = comment(line)
            if note and not line[: len(line) - len(note)].strip():
                block_needs = note if NEEDS.match(note) else block_needs
                continue
            needs = note if NEEDS.match(note) else block_needs
            tokens = words(line)
            while "./run" in tokens:
                at = tokens.index("./run")
                head = tokens[:at]
                env_start = len(head)
                while env_start and ENV.match(head[env_start - 1]):
                    env_start -= 1
                env = dict(word.split("=", 1) for word in head[env_start:])
                rest = tokens[at + 1:]
                end = next((i for i, word in enumerate(rest) if word in SEPARATORS), len(rest))
                seen = earlier.get(block.page, "")
                found.append(Command(block, number, line.strip(), env, rest[:end], needs, seen))
                earlier[block.page] = seen + "\n" + line
                tokens = rest[end:]
    return found


COMMANDS = commands()


def find(page: str, start: str) -> Command:
    """The command on `page` that starts with `start`: these are the ones the tests below run."""
    matches = [c for c in COMMANDS if str(c).startswith(page + ":") and " ".join(["./run", *c.words]).startswith(start)]
    assert len(matches) == 1, f"{page} should show exactly one command starting with {start!r}, found {len(matches)}"
    return matches[0]


def test_every_page_shows_commands():
    pages = {c.block.page for c in COMMANDS}
    assert ROOT / "README.md" in pages and len(pages) >= 6, sorted(str(p) for p in pages)
    readme = [c for c in COMMANDS if c.block.page.name == "README.md"]
    assert {tuple(c.words[:2]) for c in readme} >= {("naturelm", "infer"), ("pytest",)}


@pytest.mark.parametrize("block", blocks("bash"), ids=str)
def test_bash_block_is_valid_and_goes_through_run(block):
    check = subprocess.run(["bash", "-n"], input=block.body, text=True, capture_output=True)
    assert check.returncode == 0, f"{block}: {check.stderr}"
    if block.body.startswith("#!"):
        return  # a script for another machine (SLURM): its commands are checked one by one below
    block_needs = False
    for number, line in logical_lines(block):
        note = comment(line)
        code = line[: len(line) - len(note)].strip()
        block_needs = block_needs or bool(not code and NEEDS.match(note))
        assert not code or "./run" in words(code) or block_needs or NEEDS.match(note), (
            f"{block.page.relative_to(ROOT)}:{number}: `{code}` does not start with ./run, so it does not run from a "
            "fresh clone (a line that needs something else first, such as a running server, says so: `# needs ...`)"
        )


@pytest.mark.parametrize("block", blocks("python"), ids=str)
def test_python_block_compiles(block):
    compile(block.body, str(block), "exec")


def missing(path: str, command: Command) -> bool:
    """Neither on disk (from the repository root, as `./run` runs) nor written by an earlier command of the page."""
    return "://" in path or not ((ROOT / path).exists() or path.rstrip("/") in command.earlier)


@cache
def naturelm_parser() -> argparse.ArgumentParser:
    from naturelm.cli import build_parser

    return build_parser()


def parse(parser: argparse.ArgumentParser, args: list[str], command: Command) -> argparse.Namespace:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(args)
    except SystemExit as exit:
        if exit.code == 0 and "--help" in args:
            return None  # a help request: the parser answered it
        pytest.fail(f"{command}: `{command.text}` is refused by its parser: {errors.getvalue().strip()}")


def naturelm_lacks(args: argparse.Namespace, command: Command) -> list[str]:
    """What a parsed `naturelm` command needs that a bare clone with ../shared does not have."""
    lacks = []
    if args.command in ("infer", "embed") or getattr(args, "evaluate_command", None) == "beans-zero":
        if not args.smoke and missing(args.model, command):
            lacks.append(f"the weights {args.model}")
        if (args.device or "cpu") != "cpu":
            lacks.append(f"the device {args.device}")
    if args.command in ("infer", "embed"):
        lacks += [f"the input {path}" for path in args.inputs if missing(path, command)]
        if getattr(args, "ray", None):
            lacks.append(f"the Ray cluster {args.ray}")
        labels = getattr(args, "labels", None)
        if labels and "," not in labels and missing(labels, command):
            lacks.append(f"the labels file {labels}")
    elif args.command == "convert":
        paths = [args.original_dir, args.base_model, args.qformer_config]
        lacks += [f"{path}" for path in paths if path and missing(path, command)]
    elif args.command == "serve":
        if not args.smoke and missing(args.model, command):
            lacks.append(f"the weights {args.model}")
    elif getattr(args, "evaluate_command", None) == "beans-zero" and missing(args.dataset, command):
        lacks.append(f"the dataset {args.dataset}")
    elif getattr(args, "evaluate_command", None) == "score":
        lacks += [f"{path}" for path in (args.predictions, args.labels) if path and missing(path, command)]
    return lacks


def script_parser(script: Path) -> argparse.ArgumentParser:
    """The script's command line, rebuilt from its literal `add_argument(...)` calls (running the script to ask it
    would run a benchmark)."""
    parser = argparse.ArgumentParser(prog=script.name)
    types = {"int": int, "float": float, "str": str}
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            options = {}
            for keyword in node.keywords:
                if keyword.arg == "type":
                    options["type"] = types.get(getattr(keyword.value, "id", ""), str)
                elif keyword.arg in ("nargs", "choices", "action", "const"):
                    with contextlib.suppress(ValueError):
                        options[keyword.arg] = ast.literal_eval(keyword.value)
            parser.add_argument(*(ast.literal_eval(a) for a in node.args), **options)
    return parser


@cache
def training_script():
    spec = importlib.util.spec_from_file_location("sft_naturelm", ROOT / "training" / "sft_naturelm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_training(args: list[str], command: Command) -> list[str]:
    """`sft_naturelm.py`'s arguments through its own `TrlParser` with the recipe applied (unknown keys and options
    stop it); on a machine without GPUs, GPU commands are parsed as if told `--use_cpu true`."""
    import torch

    recipe = args[args.index("--config") + 1]
    assert (ROOT / recipe).is_file(), f"{command}: no recipe {recipe}"
    for option in ("--deepspeed",):
        if option in args:
            assert (ROOT / args[args.index(option) + 1]).is_file(), f"{command}: no {args[args.index(option) + 1]}"
    on_cpu = [] if torch.cuda.is_available() or "--use_cpu" in args else ["--use_cpu", "true"]
    try:
        parsed = training_script().make_parser().parse_args_and_config(args + on_cpu)
    except (ValueError, SystemExit) as error:
        pytest.fail(f"{command}: the training script refuses `{command.text}`: {error}")
    naturelm_args, data_args, model_args = parsed[0], parsed[1], parsed[3]
    lacks = [f"the data {d.path}" for d in data_args.datasets or [] if missing(d.path, command)]
    weights = [model_args.model_name_or_path] if model_args.model_name_or_path else [
        naturelm_args.audio_encoder_name_or_path, naturelm_args.text_model_name_or_path]
    lacks += [f"the weights {w}" for w in weights if not w or missing(w, command)]
    return lacks


def check_accelerate(args: list[str], command: Command) -> list[str]:
    from accelerate.commands.launch import launch_command_parser

    assert args[0] == "launch", f"{command}: only `accelerate launch` is expected"
    launch = parse(launch_command_parser(), args[1:], command)
    config = ROOT / launch.config_file
    assert config.is_file(), f"{command}: no accelerate config {launch.config_file}"
    script = ROOT / launch.training_script
    assert script.is_file(), f"{command}: no script {launch.training_script}"
    lacks = [] if config.name == "cpu.yaml" else [f"the GPUs of {launch.config_file}"]
    if script.name == "sft_naturelm.py":
        lacks += check_training(launch.training_script_args, command)
    return lacks


def check_python(args: list[str], env: dict, command: Command) -> list[str]:
    if args[0] == "-c":
        compile(args[1], str(command), "exec")
        return []
    if args[0] == "-m":
        assert importlib.util.find_spec(args[1]), f"{command}: no module {args[1]}"
        return []
    if args[0] == "-":
        return []  # the program comes on standard input (a here-document, compiled by the block's own check)
    script = ROOT / args[0]
    assert script.is_file(), f"{command}: no script {args[0]}"
    parse(script_parser(script), args[1:], command)
    model = env.get("NATURELM_MODEL")
    return [f"the model {model}"] if model and model != "tiny" and missing(model, command) else []


def check_uv(args: list[str], command: Command) -> list[str]:
    uv = sorted((ROOT / ".cache").glob("uv-*/bin/uv"))
    assert uv, "./run installs uv into .cache/uv-VERSION; it is not there"
    result = subprocess.run([str(uv[-1]), *args, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"{command}: uv refuses `{command.text}`: {result.stderr.strip()}"
    return []


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_command_parses_and_says_what_it_needs(command):
    program, args = command.words[0], command.words[1:]
    if program != "uv":
        assert (ROOT / ".venv" / "bin" / program).exists(), f"{command}: `{program}` is not in the project's .venv"
    if program == "naturelm":
        parsed = parse(naturelm_parser(), args, command)
        lacks = naturelm_lacks(parsed, command) if parsed else []
    elif program == "python":
        lacks = check_python(args, command.env, command)
    elif program == "accelerate":
        lacks = check_accelerate(args, command)
    elif program == "uv":
        lacks = check_uv(args, command)
    elif program == "pytest":
        lacks = []
        named = [a for i, a in enumerate(args)
                 if not a.startswith("-") and (i == 0 or args[i - 1] not in ("-k", "-m", "-n"))]
        assert all((ROOT / a).exists() for a in named), f"{command}: a named test is missing"
    elif program == "ray":
        lacks = [] if args[:1] == ["start"] and command.needs else ["a `# needs ...` note: it starts a Ray node"]
    else:
        pytest.fail(f"{command}: no check for `{program}`; add one to tests/test_docs.py")
    assert command.needs or not lacks, (
        f"{command}: `{command.text}` needs {', '.join(lacks)}, which a fresh clone lacks: say so in a "
        "`# needs ...` comment, or make the command runnable here"
    )


def test_readme_smoke_command_runs_as_written(audio_recordings):
    from audio_fixture import num_windows

    command = find("README.md", "./run naturelm infer ../shared/audio")
    args = parse(naturelm_parser(), command.words[1:], command)
    result = subprocess.run(["bash", "-c", command.text], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    # A newcomer's first command says only what it is doing: the smoke banner, the progress bar, the summary.
    said = [line for line in result.stderr.splitlines() if line.strip() and "audio-s/s]" not in line]
    assert [line for line in said if not line.startswith(("SMOKE MODE", "naturelm: "))] == [], said
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    named = [(ROOT / path).resolve() for path in args.inputs]
    expected = {r.name: num_windows(r.decoded_seconds, args.window, args.hop or args.window) for r in audio_recordings
                if any(r.path.resolve() == p or p in r.path.resolve().parents for p in named)}
    assert expected, f"{command}: none of the shared recordings is among its inputs"

    assert {name: sum(Path(row["file"]).name == name for row in rows) for name in expected} == expected
    assert len(rows) == sum(expected.values())
    assert all("answer" in row and not row.get("error") for row in rows), rows[:3]


@pytest.fixture
def beside_shared(tmp_path, monkeypatch, parity_dir, audio_dir):
    """A scratch folder standing where the repository stands, so `../shared/...` in a command resolves as written."""
    (tmp_path / "shared").symlink_to(parity_dir.parent, target_is_directory=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    return tmp_path / "repo"


def run_in_process(command: Command) -> tuple[int, str, str]:
    from naturelm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(command.words[1:])
    return code, out.getvalue(), err.getvalue()


def test_convert_command_writes_the_code_files_the_page_lists(beside_shared):
    command = find("docs/convert.md", "./run naturelm convert ../shared/parity")
    code, _, err = run_in_process(command)
    assert code == 0, err
    output = beside_shared / parse(naturelm_parser(), command.words[1:], command).output_dir
    page = (ROOT / "docs" / "convert.md").read_text(encoding="utf-8")
    written = {p.name for p in output.glob("*.py")}
    listed = set(re.findall(r"`(\w+_naturelm\.py)`", page))
    assert written == listed, f"convert writes {sorted(written)}; docs/convert.md lists {sorted(listed)}"
    numbers = {"four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
    said = re.search(r"the (\w+) code\s+files", page)
    assert said and numbers.get(said[1]) == len(written), f"docs/convert.md says {said and said[1]!r} code files"
    config = json.loads((output / "config.json").read_text())
    named = {ref.split(".")[0] + ".py" for ref in config["auto_map"].values()}
    named |= {f"{p['impl'].split('.')[0]}.py" for p in config.get("custom_pipelines", {}).values()}
    assert named <= written


def test_score_command_runs(beside_shared):
    command = find("docs/evaluation.md", "./run naturelm evaluate score ../shared/")
    code, out, err = run_in_process(command)
    assert code == 0, err
    args = parse(naturelm_parser(), command.words[1:], command)
    components = {json.loads(line)["dataset_name"] for line in (beside_shared / args.predictions).open()}
    metrics = json.loads((beside_shared / args.output).read_text())
    assert components <= set(json.dumps(metrics).replace('"', " ").split()), sorted(components)


def test_missing_weights_message_names_a_login_command_that_exists(beside_shared, audio_dir, monkeypatch):
    """The README says an offline run without weights stops with exit code 2 and how to get them."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    recording = next(p for p in sorted(audio_dir.iterdir()) if p.suffix == ".wav")
    command = find("README.md", "./run naturelm infer path/to/recordings")
    args = [str(recording) if word == "path/to/recordings" else word for word in command.words]
    code, _, err = run_in_process(Command(command.block, command.line, command.text, {}, args, None, ""))
    assert code == 2, err
    login = re.search(r"run `(hf [^`]+)`", err)
    assert login, err
    hf = ROOT / ".venv" / "bin" / login[1].split()[0]
    check = subprocess.run([str(hf), *login[1].split()[1:], "--help"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert login[1] in (ROOT / "README.md").read_text(encoding="utf-8")
