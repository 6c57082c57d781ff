"""Read Parquet or CSV into a pyarrow Table, and write one atomically. Every failure is a
DataError that names the file and what is wrong with it."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from multikpi.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq", ".parquet.brotli", ".parquet.snappy", ".parquet.zstd")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")


def file_format(path: str | Path) -> str:
    """'parquet' or 'csv', from the file name."""
    name = str(path).lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    allowed = ", ".join(PARQUET_SUFFIXES + CSV_SUFFIXES)
    raise DataError(f"data file {str(path)!r}: the name must end in one of {allowed}")


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read the named columns (all when None) of a Parquet or CSV file.

    Raises DataError for a missing, empty, unreadable or corrupt file, or a missing column."""
    path = Path(path)
    fmt = file_format(path)
    _check_file(path, fmt, columns)
    table = _read(path, fmt, list(dict.fromkeys(columns)) if columns is not None else None)
    if table.num_rows == 0:
        raise DataError(f"data file {str(path)!r} has no rows")
    return table


def column_names(path: str | Path) -> list[str]:
    """The column names of a Parquet or CSV file, without reading its rows."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"data file {str(path)!r} is a directory; give a .parquet or .csv file")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    return _column_names(path, file_format(path))


class ParquetColumns:
    """A Parquet file read one column at a time, with the `column`, `num_rows` and
    `column_names` of a pyarrow Table. Encoding a column right after decoding it keeps peak memory
    at the encoded arrays plus one raw column, instead of the whole raw table (for 1M benchmark
    rows: about 0.5 GB less)."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = path
        self.column_names = list(columns)
        self.num_rows = pq.read_metadata(path).num_rows

    def column(self, name: str) -> pa.ChunkedArray:
        if name not in self.column_names:
            raise KeyError(name)
        return _read(self.path, "parquet", [name]).column(0)


def open_columns(path: str | Path, columns: list[str]) -> pa.Table | ParquetColumns:
    """Like `read_table`, with the same checks and errors, but Parquet columns are decoded only
    when asked for. CSV files are read whole (they have no column index)."""
    path = Path(path)
    if file_format(path) == "csv":
        return read_table(path, columns)
    _check_file(path, "parquet", columns)
    source = ParquetColumns(path, list(dict.fromkeys(columns)))
    if source.num_rows == 0:
        raise DataError(f"data file {str(path)!r} has no rows")
    return source


def _column_names(path: Path, fmt: str) -> list[str]:
    try:
        if fmt == "parquet":
            return pq.read_schema(path).names
        options = pacsv.ReadOptions(block_size=1 << 16)
        with pacsv.open_csv(path, read_options=options, parse_options=_parse_options(path)) as reader:
            return reader.schema.names
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as err:
        raise DataError(f"data file {str(path)!r} is not readable {fmt}: {_first_line(err)}") from None


def _check_file(path: Path, fmt: str, columns: list[str] | None) -> None:
    """DataError for a missing or empty file, an unreadable header, or missing columns."""
    if path.is_dir():
        raise DataError(f"data file {str(path)!r} is a directory; give a .parquet or .csv file")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"data file {str(path)!r} is empty (0 bytes)")
    names = _column_names(path, fmt)
    if columns is not None:
        missing = [c for c in dict.fromkeys(columns) if c not in names]
        if missing:
            raise DataError(f"data file {str(path)!r} has no column(s) {missing}; it has {names}")


def _read(path: Path, fmt: str, columns: list[str] | None) -> pa.Table:
    try:
        if fmt == "parquet":
            return pq.read_table(path, columns=columns)
        convert = pacsv.ConvertOptions(include_columns=columns, strings_can_be_null=True)
        table = pacsv.read_csv(path, parse_options=_parse_options(path), convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as err:
        raise DataError(f"data file {str(path)!r} is not readable {fmt}: {_first_line(err)}") from None
    # Arrow reads a text column holding invalid UTF-8 as `binary` instead of failing; no
    # encoder can use such a column, so say what is wrong with the file here.
    binary = [f.name for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if binary:
        raise DataError(f"data file {str(path)!r} is not readable csv: column(s) {binary} hold text that is "
                        f"not valid UTF-8")
    return table


def _is_tsv(path: Path) -> bool:
    return str(path).lower().endswith(".tsv")


def _parse_options(path: Path) -> pacsv.ParseOptions:
    """Tab-separated for `.tsv`, comma-separated otherwise."""
    return pacsv.ParseOptions(delimiter="\t" if _is_tsv(path) else ",")


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write Parquet or CSV (by suffix) to a temporary file, then rename it into place, so a
    crash never leaves a half-written file under the final name."""
    path = Path(path)
    fmt = file_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if fmt == "parquet":
            pq.write_table(table, tmp, compression="snappy")
        else:
            options = pacsv.WriteOptions(delimiter="\t" if _is_tsv(path) else ",")
            if str(path).lower().endswith(".gz"):
                # `read_table` decompresses `.csv.gz` by its name, so the bytes must be gzip.
                with pa.CompressedOutputStream(str(tmp), "gzip") as stream:
                    pacsv.write_csv(table, stream, write_options=options)
            else:
                pacsv.write_csv(table, tmp, write_options=options)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
