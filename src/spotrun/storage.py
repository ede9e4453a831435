"""Storage URIs -> filesystems. The only module that parses bucket URIs.

Paths stay strings ("bucket/prefix/run/x"), never pathlib.Path, so gs:// and s3:// survive intact.
Credentials come from each cloud's standard environment and never pass through here as values.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs


@dataclass(frozen=True)
class Storage:
    """A filesystem plus the base path that a storage root URI names."""

    fs: pafs.FileSystem
    base: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def listdir(self, path: str) -> list[str]:
        """Names directly under `path`; empty when it does not exist."""
        if not self.exists(path):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(posixpath.basename(i.path) for i in infos)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file. On local disk the write is atomic (temp file + rename)."""
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        if not self.is_local:  # object stores publish an object only once it is complete
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def upload_file(self, local_path: str, path: str) -> None:
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        pafs.copy_files(
            local_path, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs
        )

    def delete_dir(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete_dir(path)


def open_storage(uri: str, repo_root: str | None = None) -> Storage:
    """Resolve a storage root: a plain path (relative to `repo_root`), file://, s3:// or gs://."""
    if "://" not in uri or uri.startswith("file://"):
        path = uri.removeprefix("file://")
        if not os.path.isabs(path):
            path = os.path.join(repo_root or os.getcwd(), path)
        path = os.path.abspath(path)
        return Storage(pafs.LocalFileSystem(), path, path)
    fs, base = pafs.FileSystem.from_uri(uri)
    return Storage(fs, base.rstrip("/"), uri.rstrip("/"))
