"""Datasets: `data.train` (and valid/test) as a Parquet file, a directory of Parquet files (hive
partitions such as `day=2024-05-01/` become columns), or a glob, on any filesystem pyarrow knows.

A location with a scheme is opened with `pyarrow.fs.FileSystem.from_uri`: `s3://bucket/feed/`,
`gs://bucket/feed/`, `hdfs://namenode:8020/feed/`, `file:///data/feed/`. Credentials come from
the environment as pyarrow's filesystems read them (AWS_*, GOOGLE_APPLICATION_CREDENTIALS,
HADOOP_HOME / CLASSPATH). Nothing else in multikpi depends on where the files are.

The rows of a dataset have one canonical order: files sorted by path, rows in file order. A row
group is the unit of reading (a `Chunk`); its global row number range is known from the Parquet
footers alone, so counting rows, sharding by row range and planning an epoch read no data.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from multikpi.data.tabular import PARQUET_SUFFIXES, open_columns
from multikpi.errors import DataError

GLOB_CHARS = "*?["
READ_BATCH_ROWS = 1 << 14  # rows per record batch when a row group is streamed


@dataclass(frozen=True)
class Chunk:
    """One row group: `fragment` (index into ParquetDataset.fragments), `row_group` within that
    file, `start` (global row number of its first row) and `num_rows`."""

    fragment: int
    row_group: int
    start: int
    num_rows: int


def is_single_local_file(location: str) -> bool:
    """A plain path to one file (Parquet or CSV): the in-memory reader handles it as before."""
    return "://" not in location and not any(c in location for c in GLOB_CHARS) and not Path(location).is_dir()


class ParquetDataset:
    """The Parquet files of `location`, their row groups in canonical order, and readers.

    columns: the columns every file must have (partition columns count)."""

    def __init__(self, location: str, columns: list[str]):
        self.location = location
        filesystem, paths, base = _resolve(location)
        self.filesystem = filesystem
        self.paths = paths
        # imported here, not at the top: pyarrow.dataset imports pandas when it is installed (60 MB
        # resident), which the single-file path (footer_bytes, data/tabular.py) never needs
        import pyarrow.dataset as ds

        try:
            self.dataset = ds.dataset(paths, filesystem=filesystem, format="parquet", partitioning="hive",
                                      partition_base_dir=base)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"data {location!r} is not a readable Parquet dataset: {_first_line(err)}") from None
        self.schema = self.dataset.schema
        missing = [c for c in dict.fromkeys(columns) if c not in self.schema.names]
        if missing:
            raise DataError(f"data {location!r} has no column(s) {missing}; it has {self.schema.names}")
        self.fragments = list(self.dataset.get_fragments())
        self.chunks = self._chunks(columns)
        self.num_rows = sum(c.num_rows for c in self.chunks)
        if self.num_rows == 0:
            raise DataError(f"data {location!r} has no rows")

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names)

    def _chunks(self, columns: list[str]) -> list[Chunk]:
        chunks, start = [], 0
        for index, fragment in enumerate(self.fragments):
            try:
                fragment.ensure_complete_metadata()
                physical = fragment.physical_schema
            except (pa.ArrowInvalid, OSError) as err:
                raise DataError(f"data file {fragment.path!r} is not readable parquet: {_first_line(err)}") from None
            _check_types(fragment.path, physical, self.schema, columns)
            for group in fragment.row_groups:
                if group.num_rows:
                    chunks.append(Chunk(index, group.id, start, group.num_rows))
                    start += group.num_rows
        return chunks

    def read_chunk(self, chunk: Chunk, columns: list[str], batch_rows: int = READ_BATCH_ROWS) -> Iterator[pa.Table]:
        """The rows of one row group, `batch_rows` at a time, as Tables of `columns`."""
        fragment = self.fragments[chunk.fragment].subset(row_group_ids=[chunk.row_group])
        try:
            for batch in fragment.to_batches(schema=self.schema, columns=columns, batch_size=batch_rows,
                                             use_threads=True):
                if batch.num_rows:
                    yield pa.Table.from_batches([batch])
        except (pa.ArrowInvalid, OSError) as err:
            path = self.fragments[chunk.fragment].path
            raise DataError(f"data file {path!r} cannot be read: {_first_line(err)}") from None

    def column(self, name: str) -> pa.ChunkedArray:
        """One column over every row, in canonical order (the in-memory reader of a dataset)."""
        parts = []
        for fragment in self.fragments:
            table = fragment.to_table(schema=self.schema, columns=[name])
            parts.extend(table.column(0).chunks)
        return pa.chunked_array(parts, type=self.schema.field(name).type)

    def uncompressed_bytes(self, columns: list[str]) -> int:
        """The decoded size of `columns` over all row groups, from the footers (partition columns: 8 B a row)."""
        total = 0
        for fragment in self.fragments:
            metadata = fragment.metadata
            sizes = _column_sizes(metadata, columns)
            total += sum(sizes.values()) + 8 * metadata.num_rows * len([c for c in columns if c not in sizes])
        return total

    def fingerprint(self) -> dict[str, Any]:
        """What `--resume` compares: the files, their sizes and modification times, and their row counts."""
        digest = hashlib.sha256()
        for path in self.paths:
            info = self.filesystem.get_file_info(path)
            digest.update(f"{path}\0{info.size}\0{info.mtime_ns}\n".encode())
        return {"path": self.location, "files": len(self.paths), "rows": self.num_rows,
                "sha256_listing": digest.hexdigest()}


def footer_bytes(location: str, columns: list[str]) -> tuple[int, dict[str, int]]:
    """(rows, column -> decoded bytes over all row groups) from the Parquet footers: of one local
    file through pyarrow.parquet, of any other location through ParquetDataset. DataError when a
    footer cannot be read."""
    if not is_single_local_file(location):
        dataset = ParquetDataset(location, columns)
        return dataset.num_rows, {c: dataset.uncompressed_bytes([c]) for c in columns}
    try:
        metadata = pq.ParquetFile(location).metadata
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"data {location!r} is not readable parquet: {_first_line(err)}") from None
    return metadata.num_rows, {c: 0 for c in columns} | _column_sizes(metadata, columns)


def _column_sizes(metadata: pq.FileMetaData, columns: list[str]) -> dict[str, int]:
    """column -> decoded bytes over the file's row groups, for the `columns` the file holds."""
    names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    wanted = {i: n for i, n in enumerate(names) if n in columns}
    sizes = dict.fromkeys(wanted.values(), 0)
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for i, name in wanted.items():
            sizes[name] += group.column(i).total_uncompressed_size
    return sizes


class DatasetColumns:
    """A ParquetDataset as the encoders' ColumnSource (`num_rows`, `column_names`, `column`), one
    column decoded at a time, for the in-memory path on a directory, a glob or a URI."""

    def __init__(self, dataset: ParquetDataset, columns: list[str]):
        self.dataset = dataset
        self.column_names = list(dict.fromkeys(columns))
        self.num_rows = dataset.num_rows

    def column(self, name: str) -> pa.ChunkedArray:
        if name not in self.column_names:
            raise KeyError(name)
        return self.dataset.column(name)


def open_source(location: str, columns: list[str]) -> Any:
    """The in-memory reader of a location: a single local file as before (data/tabular.py), any
    other location through pyarrow.dataset. Returns a ColumnSource."""
    if is_single_local_file(location):
        return open_columns(location, columns)
    return DatasetColumns(ParquetDataset(location, columns), columns)


def _resolve(location: str) -> tuple[pafs.FileSystem, list[str], str]:
    """(filesystem, sorted file paths, partition base directory) of a location."""
    if "://" in location:
        try:
            filesystem, path = pafs.FileSystem.from_uri(location)
        except (pa.ArrowInvalid, OSError, ValueError) as err:
            raise DataError(f"data {location!r}: cannot open its filesystem: {_first_line(err)}") from None
    else:
        filesystem, path = pafs.LocalFileSystem(), os.path.abspath(location)
    if any(c in path for c in GLOB_CHARS):
        base = _glob_base(path)
        paths = [p for p in _files_under(filesystem, base, location) if fnmatch.fnmatchcase(p, path)]
    else:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"data {location!r} does not exist")
        base = path if info.type == pafs.FileType.Directory else path.rsplit("/", 1)[0]
        paths = _files_under(filesystem, path, location) if info.type == pafs.FileType.Directory else [path]
    paths = [p for p in paths if _is_parquet_name(p)]
    if not paths:
        raise DataError(f"data {location!r} holds no Parquet files (names ending in {', '.join(PARQUET_SUFFIXES)})")
    return filesystem, sorted(paths), base


def _files_under(filesystem: pafs.FileSystem, directory: str, location: str) -> list[str]:
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(directory, recursive=True, allow_not_found=True))
    except OSError as err:
        raise DataError(f"data {location!r} cannot be listed: {_first_line(err)}") from None
    return [i.path for i in infos if i.type == pafs.FileType.File and not _hidden(i.path, directory)]


def _hidden(path: str, root: str) -> bool:
    """Files and directories starting with '.' or '_' (_SUCCESS, _metadata, .tmp files) are not data."""
    relative = path[len(root):].strip("/")
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _glob_base(pattern: str) -> str:
    parts = pattern.split("/")
    fixed = []
    for part in parts:
        if any(c in part for c in GLOB_CHARS):
            break
        fixed.append(part)
    return "/".join(fixed) or "/"


def _is_parquet_name(path: str) -> bool:
    return path.lower().endswith(PARQUET_SUFFIXES)


def _check_types(path: str, physical: pa.Schema, schema: pa.Schema, columns: list[str]) -> None:
    """Every needed column a file holds must have the dataset's type (or one that casts to it)."""
    for name in columns:
        index = physical.get_field_index(name)
        if index < 0:
            if name in schema.names and _is_partition_field(name, path):
                continue
            raise DataError(f"data file {path!r} has no column {name!r} (other files of the dataset have it)")
        have, want = physical.field(index).type, schema.field(name).type
        if have != want and not _castable(have, want):
            raise DataError(f"data file {path!r}: column {name!r} has type {have}; the dataset's first file has "
                            f"{want}")


def _is_partition_field(name: str, path: str) -> bool:
    return f"/{name}=" in path


def _castable(have: pa.DataType, want: pa.DataType) -> bool:
    groups = (pa.types.is_integer, pa.types.is_floating, lambda t: pa.types.is_string(t) or pa.types.is_large_string(t))
    return any(g(have) and g(want) for g in groups) or pa.types.is_dictionary(have)


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


ROW_GROUP_ROWS = 1 << 17  # rows per row group of a written part: the unit a streamed epoch reads


def write_parts(parts: Iterator[pa.Table], out_dir: str | Path, row_group_rows: int = ROW_GROUP_ROWS) -> list[Path]:
    """Write each table of `parts` (made one at a time, so memory holds one part) as
    `part-00000.parquet`, `part-00001.parquet`, ... of a new directory `out_dir`. The parts go to a
    hidden sibling directory that is renamed into place once complete: a failed or killed write
    leaves no partial dataset under `out_dir`. Returns the files written."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {str(out)!r} exists and is not an empty directory; choose a new directory")
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=False)
    names = []
    try:
        for index, table in enumerate(parts):
            name = f"part-{index:05d}.parquet"
            pq.write_table(table, staging / name, row_group_size=row_group_rows, compression="snappy")
            names.append(name)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return [out / n for n in names]
