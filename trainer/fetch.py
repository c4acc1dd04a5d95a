"""`cambrian data fetch SOURCE --out DIR`: a checked snapshot of a source's training tables in a data directory.

Why a snapshot: every candidate of an Evolution must train and be scored on the same rows (a warehouse
that changes between two candidates would make their comparison unfair), and the steps that run
candidate code must never hold the warehouse's credentials. So a trusted step reads the source once,
streaming (memory bounded by the batch size, not the table), writes the declared tables as Parquet in
the data-directory layout, checks the copy against the declaration (a failing source is refused and
nothing is left behind), and writes world.json last: its presence marks a complete directory, which is
kept (the source is not read again), so every run of an Evolution reads one snapshot (operator/reconcile/common.py
`data_snapshot` names it). In a cluster that step is the training pod's `fetch` init container, the only one
given the connection Secret, writing onto the Evolution's storage claim: the first Job's fetch writes the
snapshot, every later one finds it; locally the driver fetches into its run folder (operator/platform/local.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from cambrian.trainer.datacheck import require_valid
from cambrian.trainer.runstore import DIGEST, MARKER, data_fingerprint
from cambrian.trainer.schema import BUILT_IN, WORLD, DataSchema
from cambrian.trainer.sources import BATCH_ROWS, close, open_source, redact, table_path

DECLARATION = "declaration.yaml"  # a declaration that is not built in travels with its snapshot


def fetch(uri: str, out_dir: str | Path, schema: DataSchema = WORLD, batch_rows: int = BATCH_ROWS) -> dict:
    """Copy the declared tables of `uri` into `out_dir`; a no-op when `out_dir` is already complete.
    Returns the directory's world.json content. Raises ConfigError (exit 2) for a source that cannot be
    read or fails the declaration's check.

    Safe to run at once from several processes or pods into one `out_dir` (the training Jobs of one Evolution on
    a shared claim): each writes a folder of its own and renames it into place, which succeeds for the first one
    only; every other discards its copy and returns the winner's, so all of them read one snapshot even when the
    source changed between their reads."""
    out = Path(out_dir)
    if (out / MARKER).is_file():  # a restarted driver or a re-run step: the snapshot is kept, not re-read
        return json.loads((out / MARKER).read_text())
    partial = out.with_name(f"{out.name}.partial-{uuid.uuid4().hex[:12]}")  # its own: another fetch may run beside
    partial.mkdir(parents=True)
    try:
        opened = open_source(uri)
        try:
            rows = {key: _copy(opened, key, table, partial, batch_rows) for key, table in schema.tables.items()}
        finally:
            close(opened)
        require_valid(schema, open_source(str(partial)), uri, batch_rows)  # the copy, named by its source
        meta = _meta(uri, schema, partial, rows)
        if meta["declaration"] == DECLARATION:
            (partial / DECLARATION).write_text(yaml.safe_dump(schema.model_dump(mode="json", exclude_defaults=True),
                                                              sort_keys=False))
        # what the run store keys baseline runs by: an Evolution fetching the same rows again reuses its seeds
        meta[DIGEST] = content_digest(partial)
        (partial / MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return meta if _place(partial, out) else json.loads((out / MARKER).read_text())
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def content_digest(folder: Path) -> str:
    """The snapshot's content (every file but the marker, by relative path and bytes): equal for two fetches that
    copied the same rows, whichever folder and time they were written at."""
    return data_fingerprint(folder, content=True, skip=(MARKER,))


def _place(partial: Path, out: Path, clear: bool = True) -> bool:
    """Rename the complete copy to `out`: True if it is now the snapshot, False if another fetch's complete one was
    there first (kept: it may already be read). rename(2) replaces only a missing or empty folder, atomically."""
    try:
        os.rename(partial, out)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        if (out / MARKER).is_file():
            return False
        if not clear:
            raise
    # an incomplete folder (no world.json, so nothing reads it: an older attempt's) is set aside, then replaced
    junk = out.with_name(f"{out.name}.incomplete-{uuid.uuid4().hex[:12]}")
    with contextlib.suppress(FileNotFoundError):  # another fetch set it aside first
        os.rename(out, junk)
    shutil.rmtree(junk, ignore_errors=True)
    return _place(partial, out, clear=False)


def _copy(source, key: str, table, folder: Path, batch_rows: int) -> int:
    columns = list(table.columns)
    path = folder / table_path(key, table)  # where the check of the copy, and training, read it
    path.parent.mkdir(parents=True, exist_ok=True)
    writer, rows = None, 0
    try:
        for batch in source.batches(key, table, columns, batch_rows):
            if writer is None:
                writer = pq.ParquetWriter(path, batch.schema)
            writer.write_batch(batch)
            rows += batch.num_rows
        if writer is None:  # an empty table is still a table: the check names what is wrong with it
            schema = source.arrow_schema(key, table)
            pq.write_table(pa.table({c: pa.array([], schema.field(c).type) for c in columns if c in schema.names}), path)
    finally:
        if writer is not None:
            writer.close()
    return rows


def _meta(uri: str, schema: DataSchema, folder: Path, rows: dict[str, int]) -> dict:
    """What the world's generator writes about itself, as far as logged data can say it."""
    built_in = next((key for key, known in BUILT_IN.items() if known == schema), None)
    # the declaration training reads the snapshot through (trainer/data.py source_schema)
    meta = {"schema_version": 1, "source": redact(uri), "declaration": built_in or DECLARATION, "rows": rows,
            "logging_policy": "observational", "params": {}, "seed": None}
    if schema == WORLD:
        topics = pq.read_table(folder / table_path("items", schema.tables["items"]), columns=["topic"])["topic"]
        days = pq.read_table(folder / table_path("impressions", schema.tables["impressions"]), columns=["day"])["day"]
        meta.update(n_users=rows["users"], n_items=rows["items"],
                    n_topics=int(pc.max(topics).as_py() or 0) + 1 if len(topics) else 0,
                    days=len(pc.unique(days)))
    return meta
