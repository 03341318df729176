"""``files``: the one way the package replaces a file (write beside it, then one rename);
``tables``: the one Markdown table writer."""

from __future__ import annotations

import pytest

from segformer_jax import files


def test_atomic_write_replaces_text_and_bytes(tmp_path):
    path = tmp_path / "config.json"
    files.atomic_write(path, "old\n")
    files.atomic_write(path, b"new\n")
    assert path.read_bytes() == b"new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]   # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("kept\n")
    with pytest.raises(RuntimeError, match="disk"):
        with files.replacing(path) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".metrics.jsonl.tmp-")
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "kept\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_markdown_table_aligns_numbers_right():
    from segformer_jax.tables import markdown_table
    assert markdown_table(["a", "b", "c"], [["x", 1, 2.5]], numbers_from=1) == (
        "| a | b | c |\n|---|---:|---:|\n| x | 1 | 2.5 |")
    assert markdown_table(["a", "b"], []).splitlines()[1] == "|---|---|"
