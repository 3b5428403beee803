"""Content-addressed files: names from the hash, atomic writes, deduplication, no path games."""

from __future__ import annotations

import hashlib
import os

import pytest

from storage.files import FileStore, MissingFile, sniff_suffix

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 100


def test_put_names_the_file_by_its_sha256(tmp_path):
    store = FileStore(tmp_path)
    key = store.put(PNG, ".png")
    digest = hashlib.sha256(PNG).hexdigest()
    assert key == f"{digest[:2]}/{digest}.png"
    assert (tmp_path / digest[:2] / f"{digest}.png").read_bytes() == PNG
    assert store.get(key) == PNG


def test_same_bytes_are_stored_once(tmp_path):
    store = FileStore(tmp_path)
    first = store.put(PNG, ".png")
    mtime = store.path(first).stat().st_mtime_ns
    assert store.put(PNG, ".png") == first
    assert store.path(first).stat().st_mtime_ns == mtime  # not rewritten
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [store.path(first).name]
    assert store.put(PNG + b"!", ".png") != first


def test_a_truncated_file_is_written_again(tmp_path):
    store = FileStore(tmp_path)
    key = store.put(PNG, ".png")
    store.path(key).write_bytes(PNG[:10])
    assert store.put(PNG, ".png") == key
    assert store.get(key) == PNG


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path, monkeypatch):
    store = FileStore(tmp_path)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put(PNG, ".png")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    "key",
    [
        "../etc/passwd",
        "ab/../../secret.png",
        "/etc/passwd",
        "zz/" + "a" * 64 + ".png",  # folder does not match the hash
        "ab/ab" + "c" * 61 + ".png",  # one hex digit short
        "ab/ab" + "c" * 62 + ".PNG",
    ],
)
def test_keys_that_are_not_hash_names_are_refused(tmp_path, key):
    with pytest.raises(ValueError, match="not a stored file key"):
        FileStore(tmp_path).path(key)


def test_a_missing_file_is_a_clear_error(tmp_path):
    store = FileStore(tmp_path)
    key = store.key_for(PNG, ".png")
    with pytest.raises(MissingFile, match="missing from the data directory"):
        store.get(key)
    assert not store.exists(key)


def test_bad_suffix_is_refused(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        FileStore(tmp_path).put(PNG, "png/../x")


@pytest.mark.parametrize(
    ("data", "suffix"),
    [
        (PNG, ".png"),
        (b"\xff\xd8\xff\xe0rest", ".jpg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", ".webp"),
        (b"GIF89a...", ".gif"),
        (b"hello", ".bin"),
    ],
)
def test_sniff_suffix(data, suffix):
    assert sniff_suffix(data) == suffix
