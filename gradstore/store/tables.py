"""The store's folder of Lance datasets, one ``<name>.lance`` per table (the layout LanceDB
uses, so stores written through LanceDB read unchanged): their names, paths, creation,
appends and removal, with Lance alone.

LanceDB's connection added nothing gradstore used beyond these few calls, and importing it
cost a second of every command's start (its namespace client's generated models); Lance
itself is what reads and writes the files either way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.fs as pafs

SUFFIX = ".lance"


def is_local(uri: str) -> bool:
    return "://" not in uri


def table_uri(store: str, name: str) -> str:
    """Where table ``name`` of the store at ``store`` lives."""
    return str(Path(store) / f"{name}{SUFFIX}") if is_local(store) else \
        f"{store.rstrip('/')}/{name}{SUFFIX}"


def table_names(store: str) -> list[str]:
    """The names of the store's table folders, sorted (committed or not: the caller
    decides)."""
    if is_local(store):
        root = Path(store)
        names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    else:
        fs, path = pafs.FileSystem.from_uri(store)
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        names = [Path(i.path).name for i in infos if i.type == pafs.FileType.Directory]
    return sorted(n[: -len(SUFFIX)] for n in names if n.endswith(SUFFIX))


def create(store: str, name: str, data: pa.RecordBatchReader | pa.Table,
           storage_version: str | None = None) -> lance.LanceDataset:
    """Write a new table (an error if it exists) in one commit."""
    kw = {} if storage_version is None else {"data_storage_version": storage_version}
    return lance.write_dataset(data, table_uri(store, name), mode="create", **kw)


def append(store: str, name: str, data: pa.Table) -> None:
    """Append ``data`` to an existing table in one commit."""
    lance.write_dataset(data, table_uri(store, name), mode="append")


def drop(store: str, name: str) -> None:
    """Remove a table's folder and everything in it."""
    uri = table_uri(store, name)
    if is_local(store):
        shutil.rmtree(uri, ignore_errors=True)
    else:
        fs, path = pafs.FileSystem.from_uri(uri)
        fs.delete_dir(path)


class LogTable:
    """A bookkeeping table read whole and appended to (a staging record, a log)."""

    def __init__(self, store: str, name: str) -> None:
        self.store, self.name = store, name

    def to_lance(self) -> lance.LanceDataset:
        return lance.dataset(table_uri(self.store, self.name))

    @property
    def schema(self) -> pa.Schema:
        return self.to_lance().schema

    def to_arrow(self) -> pa.Table:
        return self.to_lance().to_table()

    def add(self, data: pa.Table) -> None:
        append(self.store, self.name, data)
