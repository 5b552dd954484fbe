"""Paths that may be local or ``s3://``, and atomic writes.

Every stage writes through these helpers so that a crash never leaves a half-written file that a
later stage could read as valid: data goes to a temporary name first and is renamed into place
(on S3 a single PUT is already atomic, so the object is written directly).
S3 credentials and endpoint come from the standard AWS environment (``AWS_ENDPOINT_URL`` etc.).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from a2bs.runtime.faults import fault_point


def is_remote(uri: str | os.PathLike) -> bool:
    """True for URIs with a scheme other than local files (s3://, gs://, ...)."""
    return "://" in str(uri) and not str(uri).startswith("file://")


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts for both local paths and URIs."""
    base = str(base)
    if is_remote(base):
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
    return str(Path(base, *parts))


def filesystem(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or URI."""
    uri = str(uri)
    if uri.startswith("s3://"):
        return _s3_filesystem(), uri[len("s3://"):]
    if is_remote(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def _s3_filesystem() -> pafs.FileSystem:
    # s3fs reads AWS_ENDPOINT_URL / AWS_* from the environment, as boto does; wrapping it keeps one
    # implementation of S3 access for Ray Data, pyarrow and our own writes.
    import s3fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    return pafs.PyFileSystem(pafs.FSSpecHandler(s3fs.S3FileSystem(**kwargs)))


def makedirs(uri: str | os.PathLike) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def exists(uri: str | os.PathLike) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def delete(uri: str | os.PathLike) -> None:
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def list_files(uri: str | os.PathLike, suffix: str = "") -> list[str]:
    """Files below a folder (recursive), as URIs/paths of the same kind as `uri`, sorted."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    prefix = "s3://" if str(uri).startswith("s3://") else ""
    return sorted(
        prefix + i.path
        for i in infos
        if i.type == pafs.FileType.File and i.path.endswith(suffix) and not Path(i.path).name.startswith(".")
    )


def read_bytes(uri: str | os.PathLike) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str | os.PathLike) -> str:
    return read_bytes(uri).decode("utf-8")


def atomic_write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write `data` so that readers see either nothing or the whole file."""
    uri = str(uri)
    if is_remote(uri):
        fs, path = filesystem(uri)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault_point("storage.before_replace", path=uri)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(uri: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(uri, text.encode("utf-8"))


def atomic_write_csv(uri: str | os.PathLike, rows: Sequence[Mapping[str, Any]], header: Sequence[str] = ()) -> None:
    """Write `rows` as one CSV table, atomically.

    Columns: `header`, then every other key of the rows in the order first seen; a row without a
    column leaves its cell empty. Values are written with ``str`` (the caller formats lists etc.).
    """
    columns = list(header)
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(uri, buf.getvalue())


def write_parquet_atomic(table: pa.Table, uri: str | os.PathLike) -> None:
    """Write one Parquet file atomically (temp name + rename locally, single PUT on S3)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(uri, sink.getvalue().to_pybytes())


@contextlib.contextmanager
def atomic_parquet_writer(uri: str | os.PathLike, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A Parquet writer whose file appears at `uri` whole, once the block ends without an error.

    Row groups stream to a temporary local file (memory: one row group, whatever the file's size),
    which is then renamed into place, or uploaded to S3 in one go.
    """
    uri = str(uri)
    remote = is_remote(uri)
    if remote:
        tmp = Path(tempfile.gettempdir()) / f"a2bs-{uuid.uuid4().hex}.parquet.tmp"
    else:
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with pq.ParquetWriter(str(tmp), schema, compression="zstd") as writer:
            yield writer
        if remote:
            fs, path = filesystem(uri)
            with open(tmp, "rb") as src, fs.open_output_stream(path) as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
            return
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        fault_point("storage.before_replace", path=uri)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def read_parquet(uri: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def local_copy(uri: str | os.PathLike, workdir: str | os.PathLike) -> str:
    """Local path of `uri`: itself when local, else a download into `workdir`."""
    if not is_remote(uri):
        return str(uri)
    dest = Path(workdir, Path(str(uri)).name)
    dest.write_bytes(read_bytes(uri))
    return str(dest)


def ray_storage_kwargs(uri: str) -> dict[str, Any]:
    """``storage_path`` (+ ``storage_filesystem`` for remote URIs) for Ray Train/Tune ``RunConfig``.

    Ray would build its own S3 client from the URI; passing our filesystem keeps one S3 setup
    (endpoint and credentials from the environment) for every stage.
    """
    if is_remote(uri):
        fs, path = filesystem(uri)
        return {"storage_filesystem": fs, "storage_path": path}
    return {"storage_path": str(uri)}
