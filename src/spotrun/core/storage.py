"""Storage URIs -> filesystems. The only module that parses bucket URIs.

`storage.root` is a path, `file://...`, `s3://bucket/prefix` or `gs://bucket/prefix`. Paths stay
strings ("bucket/prefix/run/x"), never pathlib.Path, so bucket URIs survive intact. Credentials come
only from each cloud's standard environment (AWS_ACCESS_KEY_ID..., GOOGLE_APPLICATION_CREDENTIALS) and
are never read, stored or logged here. An endpoint (an emulator, MinIO, R2) comes from
`storage.endpoint` or from AWS_ENDPOINT_URL / STORAGE_EMULATOR_HOST.

Bucket calls are retried with exponential backoff (tenacity) for up to `RETRY_S` seconds: a bucket
that errors or disappears for a minute costs time in the background writer, never a checkpoint.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import posixpath
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlparse

import pyarrow.fs as pafs
from tenacity import before_sleep_log, retry, retry_if_exception, stop_after_delay, wait_exponential

from spotrun.core import conditional

log = logging.getLogger(__name__)
RETRY_S = 120.0  # longer than the 60 s outage a checkpoint must ride out
SCHEMES = ("file", "s3", "gs")


def _walk(folder: str):
    """Every file below a local `folder`, relative to it (none when it does not exist). os.walk, not
    pyarrow's listing: that one fails with ENOENT when the folder appears between its failed read and
    its existence check (the first lease or checkpoint of a run, written while another lists)."""
    for root, _, names in os.walk(folder):
        rel = os.path.relpath(root, folder)
        yield from (name if rel == "." else f"{rel}/{name}" for name in names)


def _transient(e: BaseException) -> bool:
    return isinstance(e, OSError) and not isinstance(
        e, FileNotFoundError | IsADirectoryError | PermissionError
    )


_retry = retry(
    retry=retry_if_exception(_transient),
    stop=stop_after_delay(RETRY_S),
    wait=wait_exponential(multiplier=0.5, max=8),
    before_sleep=before_sleep_log(log, logging.WARNING),
    reraise=True,
)


class Fence(Protocol):
    """The writer's right to write a run (spotrun.recovery.lease.Lease): calling it raises once a
    newer attempt holds the run; `fresh=True` asks the store instead of a recent answer."""

    epoch: int

    def __call__(self, fresh: bool = False) -> None: ...


@dataclass(frozen=True)
class Storage:
    """A filesystem plus the base path that a storage root URI names.

    `fence`, when set, is checked by the run's writers (checkpoint commits and prunes, events,
    final/) before they write; the plain methods below never check it."""

    fs: pafs.FileSystem
    base: str
    uri: str
    endpoint: str | None = None  # storage.endpoint as configured (the env is read when used)
    region: str | None = None
    fence: Fence | None = None

    def fenced(self, fence: Fence | None) -> Storage:
        return dataclasses.replace(self, fence=fence)

    def check_fence(self, fresh: bool = False) -> None:
        if self.fence is not None:
            self.fence(fresh)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    def probe(self) -> str | None:
        """One un-retried call to the root: None when reachable, else the reason (for a clear error)."""
        if self.is_local:
            return None
        bucket = self.base.split("/", 1)[0]
        try:
            if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                return f"bucket {bucket!r} does not exist"
        except Exception as e:  # noqa: BLE001 - any failure is reported to the user as is
            return str(e).splitlines()[0][:200] or type(e).__name__
        return None

    @_retry
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    @_retry
    def list_files(self, path: str) -> list[str]:
        """Paths of every file below `path`, relative to it; empty when it does not exist.

        One recursive listing: object stores (and their emulators) do not all report the implicit
        "directories" of a non-recursive one."""
        if self.is_local:  # a folder another process creates meanwhile: listed, or empty
            return sorted(_walk(path))
        prefix = path.rstrip("/") + "/"
        infos = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
        files = (i.path for i in infos if i.type == pafs.FileType.File)
        return sorted(p[len(prefix) :] for p in files if p.startswith(prefix))

    @_retry
    def read_bytes(self, path: str) -> bytes:
        # One sized read = one GET. A plain stream read() issues many small ranged GETs, which
        # took 28 s instead of 0.5 s for 60 MB from an S3 API server here.
        with self.fs.open_input_file(path) as f:
            return f.read(f.size())

    @_retry
    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file. On local disk the write is atomic (temp file + rename); object stores
        publish an object only once its upload completes."""
        if not self.is_local:
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        tmp = f"{path}.tmp-{os.getpid()}"
        conditional.write_synced(tmp, data)
        os.replace(tmp, path)

    @_retry
    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create `path` holding `data` only if nothing exists there: True when this call made it.

        Atomic against every other writer: a hard link on local disk (O_EXCL semantics, and the
        file appears whole), S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`. pyarrow.fs has no
        conditional write, so buckets go through their own APIs. A retried call whose first try
        did land finds its own bytes there and still returns True (so `data` must be unique)."""
        if self.is_local:
            return conditional.create_local(path, data)
        if scheme_of(self.uri) == "s3":
            region = self.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            made = conditional.create_s3(path, data, self.endpoint, region)
        else:
            ep = _endpoint(self.endpoint, "STORAGE_EMULATOR_HOST")
            made = conditional.create_gcs(path, data, f"{ep[1]}://{ep[0]}" if ep else None)
        return made or self.read_bytes(path) == data

    @_retry
    def upload_file(self, local_path: str, path: str) -> None:
        if self.is_local:
            os.makedirs(posixpath.dirname(path), exist_ok=True)
        pafs.copy_files(
            local_path, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs
        )

    @_retry
    def download_file(self, path: str, local_path: str) -> None:
        os.makedirs(os.path.dirname(local_path) or ".", exist_ok=True)
        pafs.copy_files(
            path, local_path, source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem()
        )

    @_retry
    def delete_file(self, path: str) -> None:
        """Delete one file; a missing one is fine."""
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            self.fs.delete_file(path)

    @_retry
    def delete_dir(self, path: str) -> None:
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            self.fs.delete_dir(path)


def _endpoint(configured: str | None, env_var: str) -> tuple[str, str] | None:
    """(host:port, scheme) of a custom endpoint, or None for the cloud's own."""
    url = configured or os.environ.get(env_var)
    if not url:
        return None
    parsed = urlparse(url if "://" in url else f"http://{url}")
    return parsed.netloc, parsed.scheme


def _s3(endpoint: str | None, region: str | None) -> pafs.FileSystem:
    kwargs = {"connect_timeout": 5, "request_timeout": 30}
    ep = _endpoint(endpoint, "AWS_ENDPOINT_URL")
    if ep:
        kwargs.update(endpoint_override=ep[0], scheme=ep[1])
    if region or os.environ.get("AWS_DEFAULT_REGION"):
        kwargs["region"] = region or os.environ["AWS_DEFAULT_REGION"]
    elif ep:
        kwargs["region"] = "us-east-1"  # custom endpoints rarely care; skip the region lookup
    return pafs.S3FileSystem(**kwargs)


class _NoDirMarkers(pafs.FileSystemHandler):
    """A GCS filesystem whose create_dir() writes nothing.

    Object stores have no directories: pyarrow's GcsFileSystem emulates them with empty "name/"
    objects, which the GCS emulator mishandles (the upload fails and the server stops answering).
    Paths are prefixes; directories are inferred from the objects under them either way.
    """

    def __init__(self, fs: pafs.FileSystem):
        self.fs = fs

    def __eq__(self, other):
        return isinstance(other, _NoDirMarkers) and self.fs.equals(other.fs)

    def equals(self, other):
        return self == other

    def __reduce__(self):
        return _NoDirMarkers, (self.fs,)

    def get_type_name(self):
        return "gcs"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        pass

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to empty a whole bucket")

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


def _gcs(endpoint: str | None) -> pafs.FileSystem:
    # pyarrow's own GCS retry would wait up to 15 min inside one call; keep it short, retry above.
    kwargs = {"retry_time_limit": datetime.timedelta(seconds=15)}
    ep = _endpoint(endpoint, "STORAGE_EMULATOR_HOST")
    if ep:  # emulators take no credentials
        kwargs.update(endpoint_override=ep[0], scheme=ep[1], anonymous=True)
    return pafs.PyFileSystem(_NoDirMarkers(pafs.GcsFileSystem(**kwargs)))


def scheme_of(uri: str) -> str:
    """The scheme of a storage root ("file", "s3", "gs", ...); a plain path is "file"."""
    return uri.split("://", 1)[0] if "://" in uri else "file"


def open_storage(
    uri: str, repo_root: str | None = None, endpoint: str | None = None, region: str | None = None
) -> Storage:
    """Resolve a storage root: a plain path (relative to `repo_root`), file://, s3:// or gs://."""
    scheme = scheme_of(uri)
    if scheme not in SCHEMES:
        raise ValueError(f"storage.root={uri!r}: expected a path, file://, s3:// or gs://")
    if scheme == "file":
        path = uri.removeprefix("file://")
        if not os.path.isabs(path):
            path = os.path.join(repo_root or os.getcwd(), path)
        path = os.path.abspath(path)
        return Storage(pafs.LocalFileSystem(), path, path)
    base = uri.split("://", 1)[1].strip("/")
    if not base:
        raise ValueError(f"storage.root={uri!r}: expected {scheme}://bucket[/prefix]")
    fs = _s3(endpoint, region) if scheme == "s3" else _gcs(endpoint)
    return Storage(fs, base, f"{scheme}://{base}", endpoint, region)


def storage_from_cfg(cfg, repo_root: str | None = None) -> Storage:
    s = cfg.storage
    return open_storage(s.root, repo_root, s.get("endpoint"), s.get("region"))


def split_run_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/runs/my-run` (or a path) -> (storage root, run name)."""
    head, _, name = uri.rstrip("/").rpartition("/")
    if not name or not head or head.endswith(":/"):
        raise ValueError(f"{uri!r}: expected <storage root>/<run name>")
    return head, name
