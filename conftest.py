"""Collects README.md, docs/ and plugins/*/README.md as tests: every fenced example runs (tests/docs_harness.py).

A page marked ``<!-- docs: slow (reason) -->`` gets the ``slow`` mark, so ``-m "not slow"`` leaves it out;
pages run after the pages they name in ``<!-- docs: after PAGE -->``. Under ``-n … --dist loadfile``
(pytest-xdist) all pages run on one worker, in that order, and each test file on one worker.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "tests"))

try:
    from docs_harness import DOCS, SESSION, dependency_level, page_markers  # noqa: E402
except ModuleNotFoundError as e:
    raise pytest.UsageError(f"the docs examples run through Sybil, and {e.name} is not installed: "
                            "pip install -e '.[test,docs]' (the README's test command)") from None

pytest_collect_file = DOCS.pytest()


def pytest_collection_modifyitems(session, config, items):
    pages = {}
    for item in items:
        if type(item).__name__ == "SybilItem":
            path = Path(item.path)
            if path not in pages:
                pages[path] = (dependency_level(path), page_markers(path.read_text(encoding="utf-8")))
            if "slow" in pages[path][1]:
                item.add_marker(pytest.mark.slow)
    if pages:
        # docs last, each page after the pages it waits for; within a page, in the page's order
        docs = [i for i in items if type(i).__name__ == "SybilItem"]
        rest = [i for i in items if type(i).__name__ != "SybilItem"]
        order = {id(i): n for n, i in enumerate(docs)}
        docs.sort(key=lambda i: (pages[Path(i.path)][0], order[id(i)]))
        items[:] = rest + docs


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """`pytest -n auto --dist loadfile` (the README's test command): each test file runs on one worker,
    and all docs pages run on one worker, in the order above, because a page may read what an
    earlier page wrote. (The largest unit, the docs, starts first.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling  # only with pytest-xdist, which calls this hook

    class DocsTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "docs" if path.endswith(".md") else path

    return DocsTogether(config, log)


def pytest_sessionfinish(session, exitstatus):
    SESSION.cleanup()
