"""No tracked file may point outside the product.

A reference to a sibling ``shared`` folder or to an absolute home or work directory resolves on
one machine only; in a clone, an sdist or on CI it is a dead link. The project's own method
description is ``docs/ftte.md``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The patterns are spelled with escapes and alternations so that this file's own text never
# matches them: the scan below covers this file too.
SIBLING_SHARED = re.compile(r"\.\./shared\b")
# A slash, then a home or work directory name, at the start of a path: not inside a URL
# (``example.org/home``), a relative path (``build/work``) or a home-relative one (``~/work``).
MACHINE_PATH = re.compile(r"(?<![\w.~/:$-])/(?:work|root|home|Users)(?:/|\b)")
PATTERNS = (SIBLING_SHARED, MACHINE_PATH)


def offending(text: str) -> list[str]:
    """The matches of any forbidden pattern in ``text``."""
    return [m.group(0) for pattern in PATTERNS for m in pattern.finditer(text)]


def tracked_text_files() -> list[Path]:
    """Every file git tracks that is present and is text (no NUL byte in its first 8 KiB)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    result = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip("not a git checkout: no list of tracked files")
    files = []
    for name in result.stdout.decode().split("\0"):
        path = REPO / name
        if name and path.is_file() and b"\0" not in path.read_bytes()[:8192]:
            files.append(path)
    return files


def rooted(name: str, rest: str = "/") -> str:
    """``/name`` + ``rest``, built at run time so the scan of this file does not find it."""
    return "/" + name + rest


@pytest.mark.parametrize("text", [
    "see `.." + "/shared/ftte.md`, item 3",
    "(``" + rooted("work", "/shared/ftte.md") + "``, item 4)",
    "cd " + rooted("work", " && make"),
    "cache in " + rooted("root", "/.cache/tinyfed"),
    "HOME=" + rooted("home", "/alice/"),
    "open " + rooted("Users", "/bob/notes.md"),
], ids=["sibling-shared", "work-dir", "bare-work-dir", "root-home", "linux-home", "macos-home"])
def test_patterns_catch_machine_paths(text: str) -> None:
    assert offending(text), text


@pytest.mark.parametrize("text", [
    "https://news.mit.edu/2026" + rooted("home", "/article"),
    "a serial port (`/dev/ttyACM0`)",
    "#!/usr/bin/env python",
    "`--boards-dir ~/tinyfed-boards`",
    "$HOME" + rooted("work", "/run"),
    "build" + rooted("work", "/plan.json"),
    "socket://127.0.0.1:4321",
    "[ftte.md](ftte.md#3-the-device-step)",
    "../docs/ftte.md and ./shared_data",
], ids=["url", "serial-port", "usr-bin", "home-relative", "env-var", "relative-dir", "socket-url", "doc-link",
        "relative-docs"])
def test_patterns_leave_legitimate_paths_alone(text: str) -> None:
    assert not offending(text), offending(text)


def test_no_tracked_file_refers_outside_the_product() -> None:
    files = tracked_text_files()
    assert any(p.name == "ftte.md" for p in files), "docs/ftte.md should be tracked"
    problems = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for match in offending(line):
                problems.append(f"{path.relative_to(REPO)}:{number}: {match!r} in {line.strip()!r}")
    assert not problems, "references outside the product (use docs/ftte.md or a relative path):\n" + "\n".join(
        problems)
