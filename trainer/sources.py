"""Where declared tables live, behind one reader: a local folder of Parquet, Parquet on object storage, or a
SQL warehouse.

- a folder (`data/world`, `file:///data/world`): each table is `ROOT/<path>`, a Parquet file or a folder of them;
- object storage (`s3://bucket/prefix`, `gs://bucket/prefix`): the same layout under the prefix, read with
  Arrow's own S3 and GCS clients (no botocore: its python-dateutil<3 pin cannot live with the kubernetes
  client's >=3); credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
  AWS_SESSION_TOKEN or the SDK's provider chain; AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for an S3-compatible
  server; GOOGLE_APPLICATION_CREDENTIALS), never from the source text, and are never printed;
- a SQL warehouse through ibis (`postgresql://user@host:port/db`, `duckdb:///path/to.duckdb`; any backend ibis
  speaks): each table is its `sql` name. A password belongs in PGPASSWORD (or ~/.pgpass), not in the URL; one
  that is there anyway is masked in every message.

Every source yields Arrow record batches of at most `batch_rows` rows, so a check or a loader can stream a
source far larger than memory; `read_tables` is the in-memory convenience for the trainer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from urllib.parse import urlsplit
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from cambrian.errors import ConfigError, MissingExtra, one_line
from cambrian.trainer.schema import ColumnType, DataSchema, Table

BATCH_ROWS = 65_536
_SQL_SCHEMES = ("postgres", "postgresql", "duckdb")
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)


class SourceError(ConfigError):
    """A source or one of its tables cannot be opened or read (exit code 2: the input is at fault)."""


def redact(uri: str) -> str:
    """The source as it may be printed: a password in its authority or its query replaced by ***."""
    text = re.sub(r"^([a-z][a-z0-9+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", uri, flags=re.IGNORECASE)
    return re.sub(r"([?&](?:password|secret|token)[^=&]*=)[^&]*", r"\1***", text, flags=re.IGNORECASE)


def column_type(arrow: pa.DataType) -> ColumnType | None:
    """The declaration's word for an Arrow type (None: a type no declaration can name, such as a list)."""
    if pa.types.is_dictionary(arrow):
        arrow = arrow.value_type
    if pa.types.is_boolean(arrow):
        return "bool"
    if pa.types.is_integer(arrow):
        return "int"
    if pa.types.is_floating(arrow) or pa.types.is_decimal(arrow):
        return "float"
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow) or pa.types.is_string_view(arrow):
        return "string"
    if pa.types.is_timestamp(arrow) or pa.types.is_date(arrow):
        return "timestamp"
    return None


def compatible(declared: ColumnType, found: ColumnType | None) -> bool:
    """Whether a found column can serve as declared: exact, or an integer where a float is declared."""
    return found == declared or (declared == "float" and found == "int")


def column_problems(table: Table, found: pa.Schema) -> dict[str, str]:
    """Declared columns that are absent or of another type, each with what is wrong with it."""
    out = {}
    for column, declared in table.columns.items():
        if column not in found.names:
            out[column] = f"missing (declared {declared})"
            continue
        arrow = found.field(column).type
        kind = column_type(arrow)
        if not compatible(declared, kind):
            out[column] = f"declared {declared}, found {kind or 'unsupported'} ({arrow})"
    return out


def table_path(key: str, table: Table) -> str:
    """Where a table lies under a Parquet root (a file or a folder of files): its `path`, else its key. A fetch
    writes its snapshot there, so that the snapshot reads back through the same declaration."""
    return (table.path or key).rstrip("/")


@dataclass
class ParquetSource:
    """Parquet files under a root on an Arrow file system (local, S3, GCS)."""

    uri: str
    root: str
    fs: Any  # a pyarrow.fs.FileSystem

    def _kind(self, path: str):
        from pyarrow.fs import FileType

        kind = self.fs.get_file_info(path).type
        return None if kind == FileType.NotFound else kind

    def _dataset(self, key: str, table: Table):
        import pyarrow.dataset as ds

        path = f"{self.root.rstrip('/')}/{table_path(key, table)}"
        try:
            if self._kind(path) is None:
                raise SourceError(f"table {key}: {table.path or key} not found in {redact(self.uri)}")
            return ds.dataset(path, filesystem=self.fs, format="parquet")
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - each store's client has its own errors
            raise SourceError(f"table {key}: cannot read {table.path or key} in {redact(self.uri)}: {one_line(exc)}") from None

    def arrow_schema(self, key: str, table: Table) -> pa.Schema:
        return self._dataset(key, table).schema

    def _files(self, key: str, table: Table) -> list[str]:
        from pyarrow.fs import FileSelector, FileType

        path = f"{self.root.rstrip('/')}/{table_path(key, table)}"
        if self._kind(path) != FileType.Directory:
            return [path]
        # A folder of part files, as Spark, DuckDB and pyarrow write them (no _SUCCESS, no hidden files).
        found = self.fs.get_file_info(FileSelector(path, recursive=True))
        return sorted(f.path for f in found if f.type == FileType.File
                      and not f.base_name.startswith(("_", ".")))

    def batches(self, key: str, table: Table, columns: list[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        try:
            for path in self._files(key, table):
                with self.fs.open_input_file(path) as handle:
                    # One row group at a time, nothing pre-buffered: memory is bounded by the file's row-group
                    # size and batch_rows, not by the table's length (bench/datasource.py measures it).
                    reader = pq.ParquetFile(handle, pre_buffer=False)
                    yield from reader.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False)
        except Exception as exc:  # noqa: BLE001 - as above
            raise SourceError(f"table {key}: reading {table.path or key} failed: {one_line(exc)}") from None


@dataclass
class SqlSource:
    """Tables of a SQL warehouse through ibis: one expression API for DuckDB, PostgreSQL, Trino, BigQuery, ..."""

    uri: str
    con: Any  # an ibis backend

    def _table(self, key: str, table: Table):
        name = table.sql or key
        database, _, leaf = name.rpartition(".")
        try:
            return self.con.table(leaf, database=database or None)
        except Exception as exc:  # noqa: BLE001 - each ibis backend raises its own driver's errors
            raise SourceError(f"table {key}: SQL table {name} not readable in {redact(self.uri)}: "
                              f"{redact(one_line(exc))}") from None

    def arrow_schema(self, key: str, table: Table) -> pa.Schema:
        return self._table(key, table).schema().to_pyarrow()

    def batches(self, key: str, table: Table, columns: list[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        expr = self._table(key, table).select(*columns)
        if table.order and set(table.order) <= set(columns):
            expr = expr.order_by(list(table.order))
        try:
            if getattr(self.con, "name", "") == "duckdb":
                # ibis 12 streams DuckDB through fetch_record_batch, which DuckDB 2 removed: use DuckDB's own reader.
                reader = self.con.con.sql(self.con.compile(expr)).to_arrow_reader(batch_rows)
            else:  # PostgreSQL: a server-side cursor fetching batch_rows rows at a time
                reader = expr.to_pyarrow_batches(chunk_size=batch_rows)
            yield from reader
        except Exception as exc:  # noqa: BLE001 - driver errors differ per backend
            raise SourceError(f"table {key}: reading SQL table {table.sql or key} failed: {redact(one_line(exc))}") from None

    def close(self) -> None:
        disconnect = getattr(self.con, "disconnect", None)
        if disconnect:
            disconnect()


@dataclass
class FrameSource:
    """Tables already in memory (what a loader read), so that the check runs on them without a second read."""

    uri: str
    tables: dict[str, pa.Table]

    def arrow_schema(self, key: str, table: Table) -> pa.Schema:
        if key not in self.tables:
            raise SourceError(f"table {key}: not loaded")
        return self.tables[key].schema

    def batches(self, key: str, table: Table, columns: list[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        yield from self.tables[key].select(columns).to_batches(max_chunksize=batch_rows)


Source = ParquetSource | SqlSource | FrameSource


def _extra_missing(what: str, exc: ImportError) -> MissingExtra:
    return MissingExtra(f"{what} needs {exc.name or 'a package'} (not installed)",
                        hint="pip install 'cambrian[sources]'")


def _object_store(uri: str, scheme: str):
    import pyarrow.fs as pafs

    try:
        if scheme in ("s3", "s3a"):
            options: dict[str, Any] = {}
            # An S3-compatible server (MinIO, moto, Ceph): the endpoint comes from the environment, as boto's own.
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                parsed = urlsplit(endpoint)
                options.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https")
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region:
                options["region"] = region
            return pafs.S3FileSystem(**options)
        if scheme in ("gs", "gcs"):
            return pafs.GcsFileSystem()
    except (ImportError, AttributeError, pa.ArrowException) as exc:
        raise SourceError(f"source {redact(uri)}: this pyarrow cannot read {scheme}://: {one_line(exc)}") from None
    raise SourceError(f"source {redact(uri)}: unsupported scheme {scheme}://",
                      hint="a folder, s3://bucket/prefix, gs://bucket/prefix, postgresql://host/db or duckdb:///file")


def _warehouse(uri: str, scheme: str):
    try:
        import ibis
    except ImportError as exc:
        raise _extra_missing(f"source {redact(uri)}", exc) from None
    try:
        if scheme == "duckdb":
            path = uri.split("://", 1)[1]
            if not path or not os.path.isfile(path):
                raise SourceError(f"source {uri}: no DuckDB database file at {path or '(empty path)'}")
            return ibis.duckdb.connect(path, read_only=True)
        return ibis.connect(uri)
    except SourceError:
        raise
    except ImportError as exc:
        raise _extra_missing(f"source {redact(uri)}", exc) from None
    except Exception as exc:  # noqa: BLE001 - the driver's connection error, whatever its class
        raise SourceError(f"source {redact(uri)}: cannot connect: {redact(one_line(exc))}") from None


def open_source(uri: str) -> Source:
    """The reader for a source text (see the module docstring for the forms it takes)."""
    text = str(uri).strip()
    if not text:
        raise SourceError("the source is empty", hint="a folder, s3://bucket/prefix or postgresql://host/db")
    match = _SCHEME.match(text)
    scheme = match.group(1).lower() if match else "file"
    if scheme in _SQL_SCHEMES:
        return SqlSource(text, _warehouse(text, scheme))
    if scheme == "file":
        from pyarrow.fs import LocalFileSystem

        root = text.split("://", 1)[1] if match else text
        if not os.path.isdir(root):
            raise SourceError(f"source {text}: not a folder")
        return ParquetSource(text, os.path.abspath(root), LocalFileSystem())
    fs = _object_store(text, scheme)
    return ParquetSource(text, text.split("://", 1)[1], fs)


def close(source: Source) -> None:
    if isinstance(source, SqlSource):
        source.close()


def read_tables(schema: DataSchema, source: Source, tables: list[str] | None = None) -> dict[str, pa.Table]:
    """Each declared table (or those named) as an Arrow table of exactly its declared columns, in their order.
    Only declared columns are read: an undeclared column (or table) of the source is never opened."""
    out: dict[str, pa.Table] = {}
    for key in list(schema.tables) if tables is None else tables:  # [] is none, not all
        table = schema.tables[key]
        found = source.arrow_schema(key, table)
        wrong = column_problems(table, found)
        if wrong:
            column, problem = next(iter(wrong.items()))
            raise SourceError(f"{key}.{column}: {problem}",
                              hint="run `cambrian data check` on the source for every problem at once")
        columns = list(table.columns)
        batches = list(source.batches(key, table, columns))
        wanted = pa.schema([found.field(c) for c in columns])
        # Part files may differ in width (int32 in one, int64 in another): each batch to the table's schema.
        if all(b.schema.equals(wanted) for b in batches):
            out[key] = pa.Table.from_batches(batches, schema=wanted)
        else:
            out[key] = pa.concat_tables([pa.Table.from_batches([b]).cast(wanted) for b in batches])
    return out
