"""No file in the repository points outside it: a reader of a clone has nothing else, so a fact is
cited by its public source (a URL, a project and file, a release), not by a path on the machine
it was found on, and a relative link resolves inside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Built from pieces, so this file does not match itself.
OUTSIDE = re.compile("|".join([r"\.\./" + "shared/", "shared/" + "research/", r"(?<![\w.])/" + "work/"]))
LINK = re.compile(r"\]\(([^)#\s]+)")


def tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = []
    for name in filter(None, listed.split("\0")):
        path = ROOT / name
        if path.is_file() and not path.is_symlink() and b"\0" not in path.read_bytes()[:4096]:
            files.append(path)
    return files


@pytest.mark.service  # git, in a process
def test_no_file_cites_a_path_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}"
        for path in tracked_text_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert found == []


@pytest.mark.service  # git, in a process
def test_every_relative_link_in_the_docs_stays_inside_the_repository() -> None:
    leaving = [
        f"{path.relative_to(ROOT)}: {target}"
        for path in tracked_text_files()
        if path.suffix == ".md"
        for target in LINK.findall(path.read_text())
        if "://" not in target
        and not target.startswith("mailto:")
        and not (path.parent / target).resolve().is_relative_to(ROOT)
    ]
    assert leaving == []


def test_the_patterns_catch_what_they_are_for() -> None:
    assert OUTSIDE.search("see ../" + "shared/" + "research/supabase.md §3")
    assert OUTSIDE.search("facts in /" + "work/shared/notes.md")
    assert not OUTSIDE.search("https://github.com/supabase/storage src/storage/uploader.ts")
    assert not OUTSIDE.search("WORKDIR /app and ./work/ and a/work/b")
