"""Atomic writes: a failure mid-write leaves the destination as it was and no temporary file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnfold import atomic


def test_write_text_replaces_destination(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "report.json"
    atomic.write_text(dest, "first")
    atomic.write_text(dest, "second")
    assert dest.read_text() == "second"
    assert [p.name for p in dest.parent.iterdir()] == ["report.json"]


def test_failure_keeps_old_content_and_leaves_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "plot.png"
    dest.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_path(dest) as tmp:
        tmp.write_text("half-written")
        raise RuntimeError("writer failed")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_temporary_keeps_the_suffix(tmp_path: Path) -> None:
    """matplotlib picks the format from the suffix, so the temporary must end like the target."""
    with atomic.atomic_path(tmp_path / "curve.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
