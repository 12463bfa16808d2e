"""The documentation's commands keep working: README.md, docs/**/*.md and datasets/README.md, read as text.

What is checked is derived from the documents, so a renamed script, flag, ``make`` target, module or page
fails here instead of rotting silently:

* every ``scripts/*.py`` mentioned exists and runs ``--help`` (exit 0), and every ``--flag`` written after
  it, in a ``bash`` block, inline code or a Makefile recipe, is one of its options;
* every ``make`` target exists in the Makefile; every repository path (``fewshot_l2l/``, ``benchmarks/``,
  ``scripts/``, ``tests/``, ``datasets/``, ``docs/``) exists, and a ``path.py: name`` reference names a
  ``def``/``class``/assignment in that file; every dotted ``fewshot_l2l.x.y`` name resolves;
* every checkpoint or data file a ``bash`` block reads (``--checkpoint``, ``--data``, ``--init-from``) is
  written by some documented command (``--out`` of a block or of the Makefile), and ``../shared`` inputs
  exist (skipped without the shared data, failed under ``CI=true``, as in conftest);
* relative Markdown links and images resolve, anchors included;
* every ``python`` block compiles and its imports resolve; the README's blocks run, in order, in a
  temporary folder;
* the README's ``bash`` commands run, in order, in one temporary folder: ``scripts/train.py`` and
  ``scripts/evaluate.py`` with the episode counts overridden to tiny values, ``scripts/prepare_data.py``
  when its sources are on this machine and it needs no download; the run folder holds the files the
  README's ``RUN_DIR`` paragraph lists.

``PENDING`` names what another branch in flight adds: while it is missing its checks are skipped (with its
name), once it exists it is checked like the rest. Empty it when those
branches are merged.

One module of ~380 lines rather than several: every check reads the same parsed documents (``TEXTS``,
``BLOCKS``, ``SPANS``, ``BASH``), and the command runner needs them in document order.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from itertools import takewhile
from pathlib import Path

import pytest

PENDING = {
    "docs/images/demo_curves.png": "the demo pictures (generated from a real make demo run)",
    "docs/images/demo_gates.png": "the demo pictures (generated from a real make demo run)",
}
REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("FEWSHOT_L2L_SHARED", REPO.parent / "shared"))  # as in conftest: the docs' ../shared
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md")), REPO / "datasets" / "README.md"]
REPO_DIRS = ("fewshot_l2l", "benchmarks", "scripts", "tests", "datasets", "docs")
READS = ("--checkpoint", "--data", "--init-from")
# Appended to the README's training command (argparse: the last value wins): a few seconds instead of minutes.
TINY_TRAIN = ["--episodes", "4", "--meta-batch", "2", "--val-every", "4", "--val-episodes", "2", "--n-query", "2",
              "--inner-steps", "2", "--hidden-channels", "8", "--device", "cpu"]
TINY_EVAL = ["--episodes", "4", "--device", "cpu"]
# One thread per process: these runs are tiny, and several run at once on a machine with few cores.
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S)]


def inline_spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.findall(r"`([^`\n]+)`", prose)


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a bash block as argument lists (continuation lines joined, comments dropped)."""
    return [words for line in code.replace("\\\n", " ").splitlines() if (words := shlex.split(line, comments=True))]


def brace_expand(word: str) -> list[str]:
    match = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if not match:
        return [word]
    return [w for part in match[1].split(",") for w in brace_expand(word[:match.start()] + part + word[match.end():])]


def option(words: list[str], name: str) -> str | None:
    """The value of ``name`` in a command (the last one, as argparse takes it), or ``None``."""
    values = [words[i + 1] for i, w in enumerate(words[:-1]) if w == name]
    return values[-1] if values else None


def script_calls(words: list[str]) -> list[tuple[str, list[str]]]:
    """``(scripts/X.py, its arguments)`` for each script invoked in ``words``; a script's arguments end at the
    next script or shell separator (``a.py --x && b.py --y`` in a Makefile loop gives ``--y`` to ``b.py`` only)."""
    calls = []
    for i, word in enumerate(words):
        if re.fullmatch(r"scripts/\w+\.py", word):
            args = []
            for arg in words[i + 1:]:
                if re.fullmatch(r"scripts/\w+\.py|&&|\|\||\||;|>|do|done", arg):
                    break
                args.append(arg.rstrip(";"))
                if arg.endswith(";"):
                    break
            calls.append((word, args))
    return calls


TEXTS = {rel(doc): doc.read_text(encoding="utf-8") for doc in DOCS}
BLOCKS = {name: fenced_blocks(text) for name, text in TEXTS.items()}
SPANS = {name: inline_spans(text) for name, text in TEXTS.items()}
BASH = {name: [words for lang, code in BLOCKS[name] if lang in ("bash", "sh") for words in shell_commands(code)]
        for name in TEXTS}
# Inline spans that are commands: a script call or a make target.
INLINE = {name: [shlex.split(span) for span in SPANS[name] if re.search(r"scripts/\w+\.py|^make \w", span)]
          for name in TEXTS}
COMMANDS = [(name, words) for name in TEXTS for words in BASH[name] + INLINE[name]]


def _makefile() -> tuple[set[str], set[str], list[list[str]]]:
    """The Makefile's targets, the ``--out`` folders its recipes write and its recipes' commands
    (``?=`` variables expanded): ``make demo`` and ``make test`` are the README's first commands."""
    text = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*\?=\s*(.*?)\s*$", text, re.M))
    expanded = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], m[0]), text)
    targets = set(re.findall(r"^([\w.-]+)\s*:(?!=)", text, re.M))
    recipes = [shlex.split(line) for line in expanded.splitlines() if line.startswith("\t")]
    return targets, set(re.findall(r"--out\s+(\S+)", expanded)), recipes


MAKE_TARGETS, MAKE_OUTPUTS, MAKE_RECIPES = _makefile()


def _script_flags() -> dict[str, set[str]]:
    flags: dict[str, set[str]] = {}
    for words in [w for _, w in COMMANDS] + MAKE_RECIPES:
        for script, args in script_calls(words):
            flags.setdefault(script, set()).update(a.split("=")[0] for a in args if a.startswith("--"))
    for text in TEXTS.values():  # scripts named in prose only: --help still has to work
        for script in re.findall(r"(?<![\w/])scripts/\w+\.py", text):
            flags.setdefault(script, set())
    return flags


SCRIPT_FLAGS = _script_flags()


def _repo_paths() -> set[str]:
    words = [w for name in TEXTS for w in [*SPANS[name], *(" ".join(c) for c in BASH[name])]]
    paths = set()
    for word in words:
        for match in re.finditer(rf"(?<![\w./-])((?:{'|'.join(REPO_DIRS)})/[\w./{{}},-]*)", word):
            paths.update(p.rstrip(".,:") for p in brace_expand(match[1]))
    return paths




def skip_if_pending(path: str) -> None:
    if path in PENDING and not (REPO / path).exists():
        pytest.skip(f"{path} not there yet: {PENDING[path]}")


def test_the_documents_are_parsed():
    """Guards the parser: if it finds nothing, every check below passes vacuously."""
    assert [lang for lang, _ in BLOCKS["README.md"]].count("python") >= 2
    assert any(script_calls(words) for words in BASH["README.md"])
    assert {"scripts/train.py", "scripts/evaluate.py", "scripts/prepare_data.py"} <= set(SCRIPT_FLAGS)
    assert any(words[:1] == ["make"] for _, words in COMMANDS)


# scripts/train.py lists a method's own options under --method METHOD --help: its documented flags are checked against
# the options of every method.
PER_METHOD_HELP = {"scripts/train.py": ("maml", "fomaml", "metasgd", "protonet", "finetune")}


@pytest.fixture(scope="module")
def script_help() -> dict[str, subprocess.CompletedProcess]:
    """``python scripts/X.py --help`` of every documented script that exists (scripts/train.py: also under each
    ``--method``, their outputs joined), run concurrently."""
    calls = [(script, [script, "--help"]) for script in SCRIPT_FLAGS if (REPO / script).is_file()]
    calls += [(script, [script, "--method", method, "--help"]) for script, methods in PER_METHOD_HELP.items()
              if script in SCRIPT_FLAGS and (REPO / script).is_file() for method in methods]
    running = [(script, subprocess.Popen([sys.executable, *args], cwd=REPO, env=ENV, text=True, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)) for script, args in calls]
    results: dict[str, subprocess.CompletedProcess] = {}
    for script, process in running:
        stdout, stderr = process.communicate(timeout=300)
        done = results.get(script)
        if done is None:
            results[script] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        elif done.returncode == 0:  # the first failure is the one reported
            results[script] = subprocess.CompletedProcess(process.args, process.returncode, done.stdout + stdout, stderr)
    return results


@pytest.mark.parametrize("script", sorted(SCRIPT_FLAGS))
def test_documented_script_runs_help_and_takes_the_documented_flags(script, script_help):
    skip_if_pending(script)
    assert (REPO / script).is_file(), f"{script} is documented but does not exist"
    result = script_help[script]
    assert result.returncode == 0, f"{script} --help failed:\n{result.stderr}"
    unknown = sorted(f for f in SCRIPT_FLAGS[script] if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", result.stdout))
    assert not unknown, f"the docs pass {unknown} to {script}, which its --help does not list"


@pytest.mark.parametrize("target", sorted({w[1] for _, w in COMMANDS if w[:1] == ["make"] and len(w) > 1}))
def test_documented_make_target_exists(target):
    assert target in MAKE_TARGETS, f"`make {target}` is documented but the Makefile has no such target"


@pytest.mark.parametrize("path", sorted(_repo_paths()))
def test_documented_repository_path_exists(path):
    skip_if_pending(path)
    assert (REPO / path).exists(), f"{path} is mentioned in the docs but does not exist"


@pytest.mark.parametrize("path,name", sorted({tuple(re.fullmatch(r"(\S+\.py): (\w+)", s).groups())
                                              for spans in SPANS.values() for s in spans
                                              if re.fullmatch(r"\S+\.py: \w+", s)}))
def test_documented_symbol_is_defined_in_its_file(path, name):
    text = (REPO / path).read_text()
    assert re.search(rf"^\s*(def|class)\s+{name}\b|^{name}\s*[:=]", text, re.M), f"`{path}: {name}`: no {name} there"


@pytest.mark.parametrize("dotted", sorted({m for text in TEXTS.values()
                                           for m in re.findall(r"(?<![\w/.])fewshot_l2l(?:\.[A-Za-z_]\w*)+", text)}))
def test_documented_dotted_name_resolves(dotted):
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            assert hasattr(obj, attribute), f"{dotted}: {'.'.join(parts[:split])} has no {attribute}"
            obj = getattr(obj, attribute)
        return
    pytest.fail(f"{dotted}: no such module")


def test_documented_inputs_are_produced_or_shared(shared_data):
    outputs = MAKE_OUTPUTS | {option(words, "--out") for _, words in COMMANDS} - {None}
    for name in TEXTS:
        for words in BASH[name]:
            for i, word in enumerate(words[:-1]):
                if word not in READS:
                    continue
                path = Path(words[i + 1])
                assert any(path == Path(out) or Path(out) in path.parents for out in outputs), \
                    f"{name}: `{' '.join(words)}` reads {path}, which no documented command writes (--out)"
    shared = sorted({p[len("../shared/data/"):] for _, words in COMMANDS for w in words
                     for p in brace_expand(w) if p.startswith("../shared/data/")})
    assert shared, "the docs name no ../shared inputs: update this test"
    shared_data(*shared)  # skips (fails under CI=true) naming whatever is missing


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


LINKS = sorted({(name, target) for name, text in TEXTS.items()
                for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
                if not re.match(r"[a-z]+:", target)})


@pytest.mark.parametrize("name,target", LINKS)
def test_markdown_link_resolves(name, target):
    file, _, anchor = target.partition("#")
    path = ((REPO / name).parent / file).resolve() if file else REPO / name
    skip_if_pending(rel(path) if path.is_relative_to(REPO) else str(path))
    assert path.exists(), f"{name}: link to {target}, but {path} does not exist"
    if anchor:
        headings = re.findall(r"^#+\s+(.*?)\s*$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S), re.M)
        assert anchor in {slug(h) for h in headings}, f"{name}: link to {target}, but {rel(path)} has no such heading"


@pytest.mark.parametrize("name,index", [(n, i) for n in TEXTS for i, (lang, _) in enumerate(BLOCKS[n]) if lang == "python"])
def test_python_block_compiles_and_its_imports_resolve(name, index):
    code = BLOCKS[name][index][1]
    tree = ast.parse(code, filename=f"{name} block {index}")
    imports = ast.Module([node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))], [])
    exec(compile(imports, f"{name} block {index}", "exec"), {})


def test_readme_python_blocks_run_in_order(tmp_path):
    code = "\n".join(code for lang, code in BLOCKS["README.md"] if lang == "python")
    (tmp_path / "readme.py").write_text(code)
    result = subprocess.run([sys.executable, "readme.py"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"the README's Python blocks fail:\n{result.stderr[-3000:]}"


# Each document's bash commands that call a script, in order, run for real in one temporary folder per document
# (so a command finds what an earlier one wrote): training and evaluation with tiny settings, the rest only if cheap.
CALLS = {name: [words for words in BASH[name] if script_calls(words)] for name in TEXTS}
TINY = {
    "scripts/train.py": TINY_TRAIN,
    "scripts/evaluate.py": TINY_EVAL,
    "scripts/prepare_data.py": ["--no-progress"],
    "scripts/train_optimizer.py": ["--iterations", "4", "--val-every", "2", "--val-problems", "4", "--n-test", "4",
                                   "--horizon", "10", "--unroll", "5", "--device", "cpu"],
    "scripts/evaluate_optimizer.py": ["--n-test", "4", "--n-tune", "4", "--lr-grid", "0.01", "0.1", "--device", "cpu"],
}
RUN_ORDER = [(name, index) for name in TEXTS for index in range(len(CALLS[name]))]


def never_run(name: str, index: int) -> str | None:
    """Why a documented command is never run here (its --help and flags are still checked), or ``None``."""
    words = CALLS[name][index]
    script, args = script_calls(words)[0]
    if script not in TINY:
        return f"{script} is not cheap"
    if "--download" in args:
        return "it downloads"
    earlier = next((n for n, i in RUN_ORDER[:RUN_ORDER.index((name, index))] if CALLS[n][i] == words), None)
    return f"the same command runs in {earlier}" if earlier else None


RUNNABLE = [(name, index) for name, index in RUN_ORDER if never_run(name, index) is None]


def command_args(words: list[str]) -> tuple[str, list[str]]:
    """The script and its arguments as bash would pass them (braces expanded, ../shared located)."""
    script, args = script_calls(words)[0]
    return script, [p.replace("../shared", str(SHARED), 1) if p.startswith("../shared") else p
                    for a in args for p in brace_expand(a)]


def why_not_run(name: str, index: int, cwd: Path) -> str | None:
    """Why a documented command is not run here (``None``: it is), e.g. it needs the network or a user's files."""
    reason = never_run(name, index)
    if reason:
        return reason
    script, args = command_args(CALLS[name][index])
    sources = list(takewhile(lambda a: not a.startswith("-"), args[args.index("--source") + 1:])) if "--source" in args else []
    missing = [a for a in sources if not Path(a).exists()]
    if missing:
        return f"its inputs {missing} are not on this machine"
    for flag in READS:
        value = option(args, flag)
        if value is not None and not (cwd / value).exists():
            return f"{value} was not written by an earlier command"
    return None


@pytest.fixture(scope="module")
def command_runs(tmp_path_factory) -> dict[str, tuple[Path, list[subprocess.CompletedProcess | str]]]:
    """Per document: its folder, and each script command's result, or why it was not run (a string)."""
    runs = {}
    for name in TEXTS:
        cwd = tmp_path_factory.mktemp("commands")
        results: list[subprocess.CompletedProcess | str] = []
        for index in range(len(CALLS[name])):
            reason = why_not_run(name, index, cwd)
            if reason is None:
                script, args = command_args(CALLS[name][index])
                reason = subprocess.run([sys.executable, str(REPO / script), *args, *TINY[script]], cwd=cwd, env=ENV,
                                        capture_output=True, text=True, timeout=600)
            results.append(reason)
        runs[name] = (cwd, results)
    return runs


@pytest.mark.parametrize("name,index", RUNNABLE,
                         ids=[f"{n}-{i}-{Path(script_calls(CALLS[n][i])[0][0]).stem}" for n, i in RUNNABLE])
def test_documented_command_runs(command_runs, name, index):
    words = CALLS[name][index]
    result = command_runs[name][1][index]
    if isinstance(result, str):
        pytest.skip(f"`{' '.join(words)}` not run: {result}")
    assert result.returncode == 0, f"{name}: `{' '.join(words)}` fails:\n{result.stderr[-3000:]}"
    documented = re.search(r"--json\s+#\s*one JSON line: ([\w, ]+)", TEXTS[name])
    if "--json" in words and "scripts/evaluate.py" in words and documented:  # the comment names the JSON keys
        line = json.loads(result.stdout.strip().splitlines()[-1])
        keys = set(documented[1].replace(",", " ").split())
        assert keys <= set(line), f"{name} says the JSON line has {sorted(keys)}; it has {sorted(line)}"


def test_the_readme_training_and_evaluation_run(command_runs):
    """Guards the runner: the README's glyph training and its evaluations need nothing but the repository."""
    ran = {script_calls(w)[0][0] for w, r in zip(CALLS["README.md"], command_runs["README.md"][1]) if not isinstance(r, str)}
    assert {"scripts/train.py", "scripts/evaluate.py"} <= ran


GLYPH_RUN = next(option(w, "--out") for w in CALLS["README.md"] if "scripts/train.py" in w and option(w, "--dataset") == "glyphs")
RUN_DIR_FILES = sorted(set(re.findall(r"`([\w.]+\.(?:pt|csv|png))`", next(
    p for p in TEXTS["README.md"].split("\n\n") if p.startswith("`RUN_DIR`")))))


@pytest.mark.parametrize("name", RUN_DIR_FILES)
def test_run_dir_holds_the_documented_files(command_runs, name):
    path = command_runs["README.md"][0] / GLYPH_RUN / name
    if name in PENDING and not path.exists():
        pytest.skip(f"{name} not written yet: {PENDING[name]}")
    assert path.is_file(), f"README: RUN_DIR holds {name}, but `scripts/train.py --out {GLYPH_RUN}` wrote no {name}"
