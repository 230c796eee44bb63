"""The README's promises: CI runs its very test command, and its links lead somewhere."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command_verbatim():
    readme_commands = _bash_blocks((ROOT / "README.md").read_text())
    test_command = next(c for c in readme_commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines(), "the README's test command and .ci/run have drifted apart"


def test_readme_first_command_installs_and_runs_rtk_train():
    first = _bash_blocks((ROOT / "README.md").read_text())[0]
    assert first.endswith("rtk train") and "torch==2.13.0" in first


def test_readme_links_point_at_existing_docs():
    links = re.findall(r"\]\(((?:docs/)[^)#]+)\)", (ROOT / "README.md").read_text())
    assert links, "the README links no docs"
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, f"README links to missing files: {missing}"


def test_parallel_run_keeps_docs_pages_on_one_worker_and_each_test_file_on_one():
    """The README's `-n auto --dist loadfile`: a docs page may read what an earlier page wrote, so
    every page must share one worker (conftest.py's scheduler); a test file stays whole too."""
    import subprocess  # only this test starts pytest itself
    import sys

    out = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "-v", "-p",
                          "no:cacheprovider", "README.md", "docs/writing-docs.md", "tests/test_readme.py",
                          "-k", "not parallel_run"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
    workers: dict[str, set[str]] = {}
    for worker, nodeid in re.findall(r"\[(gw\d)\][^\n]*?PASSED (\S+)", out):
        path = nodeid.split("::")[0]
        workers.setdefault("docs" if path.endswith(".md") else path, set()).add(worker)
    assert set(workers) == {"docs", "tests/test_readme.py"}, out
    assert all(len(w) == 1 for w in workers.values()), workers
