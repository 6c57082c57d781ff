"""Read Parquet or CSV into a pyarrow Table, and write one atomically. Every failure is a
DataError that names the file and what is wrong with it."""
from __future__ import annotations

import csv
import difflib
import gzip
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from multikpi.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq", ".parquet.brotli", ".parquet.snappy", ".parquet.zstd")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")
CSV_DELIMITERS = ",;\t|"  # what a CSV file's header is sniffed for
SNIFF_BYTES = 1 << 16


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
            raise DataError(missing_columns_message(str(path), missing, names))


MAX_TYPO_HINTS = 3  # missing columns up to which each gets a 'did you mean'


def missing_columns_message(source: str, missing: list[str], names: list[str]) -> str:
    """"data file 'x.csv' has no column(s) [...]" with, per missing name, the closest existing
    one, or a note that YAML read an unquoted numeric name (109_14) as a number (10914)."""
    if len(names) == 1 and len(missing) > 1:
        return (f"data file {source!r} has no column(s) {missing}: its header is one field "
                f"({names[0][:60]!r}); is it delimited by something other than , ; tab or |?")
    # a few missing names are likely typos; many are a file without them, where close names mislead
    typos = len(missing) <= MAX_TYPO_HINTS
    hints = [_column_hint(name, names, typos) for name in missing]
    listed = names if len(names) <= 30 else names[:30] + [f"... {len(names) - 30} more"]
    text = f"data file {source!r} has no column(s) {missing}"
    found = [h for h in hints if h]
    return f"{text}; {'; '.join(found)}" if found else f"{text}; it has {listed}"


def _column_hint(name: str, names: list[str], typos: bool = True) -> str:
    as_yaml = [n for n in names if _yaml_scalar_text(n) == name and n != name]
    if as_yaml:
        return (f"YAML read the unquoted name {as_yaml[0]} as the number {name}: quote numeric column names "
                f"(\"{as_yaml[0]}\")")
    if not typos:
        return ""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if not close:  # a case or spacing slip: 'clothing id' for 'Clothing ID'
        folded = {" ".join(n.lower().replace("_", " ").split()): n for n in names}
        close = [folded[k] for k in difflib.get_close_matches(" ".join(name.lower().replace("_", " ").split()),
                                                            list(folded), n=1, cutoff=0.6)]
    return f"did you mean {close[0]!r} for {name!r}?" if close else ""


def _yaml_scalar_text(name: str) -> str | None:
    """What an unquoted column name becomes in a YAML config, as text, when YAML reads it as a
    number or a boolean (109_14 -> '10914', 1.50 -> '1.5', on -> 'True'); None otherwise."""
    try:
        value = yaml.safe_load(name)
    except yaml.YAMLError:
        return None
    return str(value) if isinstance(value, int | float | bool) else None


def _read(path: Path, fmt: str, columns: list[str] | None) -> pa.Table:
    try:
        if fmt == "parquet":  # ParquetFile, not pq.read_table: that goes through pyarrow.dataset (and pandas)
            with pq.ParquetFile(path) as handle:
                return handle.read(columns=columns)
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
    """The delimiter sniffed from the file's first lines among `CSV_DELIMITERS` (csv.Sniffer);
    tab for `.tsv`, comma when the sniffer cannot tell. Line breaks are allowed inside quoted
    values: review texts and addresses hold them (2,024 of the 23,486 women's e-commerce reviews),
    and without the option Arrow's parallel chunker splits such a file at the wrong line breaks,
    sometimes with an error and sometimes silently, into shifted rows (tested). The cost is about
    30% of the parse time of a plain CSV (1.3-1.9 s -> 1.7-2.5 s for 436 MB)."""
    default = "\t" if _is_tsv(path) else ","
    return pacsv.ParseOptions(delimiter=sniff_delimiter(path, default), newlines_in_values=True)


def sniff_delimiter(path: Path, default: str) -> str:
    """`default`, unless the header read with it is one field that holds another delimiter of
    `CSV_DELIMITERS` (a `;`-separated export, say): then the one it holds most often (outside
    quotes). Conservative on purpose: a file that parses into columns is read as it always was."""
    header = _header_line(path)
    if header is None:
        return default
    fields = next(csv.reader([header], delimiter=default), [])
    if len(fields) != 1:
        return default
    unquoted = "".join(part for i, part in enumerate(header.split('"')) if i % 2 == 0)
    counts = {d: unquoted.count(d) for d in CSV_DELIMITERS if d != default}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else default


def _header_line(path: Path) -> str | None:
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as stream:
            return stream.readline(SNIFF_BYTES).rstrip("\r\n")
    except (OSError, EOFError):
        return None  # the reader reports the unreadable file with its own message


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
