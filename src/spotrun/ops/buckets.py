"""The user's own bucket, for a cloud launch that names none (`make finetune CLOUD=gcp`).

    gcp: gs://spotrun-<user>-<hash>/runs      aws: s3://spotrun-<user>-<hash>/runs

`<hash>` is a short hash of user@host: bucket names are global across every account of a cloud, so
the user name alone would clash with someone else's. The first real launch creates the bucket when it
does not exist and remembers it in ~/.config/spotrun/buckets.json; every later launch of that user
uses the remembered one, even from another host name. A dry run only names it.
Azure: spotrun's storage speaks s3:// and gs:// only, so an Azure launch must name one of those.
Creating a GCS bucket needs its project: GOOGLE_CLOUD_PROJECT (or CLOUDSDK_CORE_PROJECT).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import re
import socket

import pyarrow.fs as pafs

from spotrun.core.errors import ConfigError
from spotrun.core.storage import _endpoint

SCHEME = {"gcp": "gs", "aws": "s3"}
PREFIX = "runs"  # runs live under <bucket>/runs/, as they do under ./runs locally


def memory_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "spotrun", "buckets.json")


def remembered() -> dict[str, str]:
    try:
        with open(memory_path()) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def remember(cloud: str, root: str) -> None:
    """Write the choice (temp file + rename: a half-written file never replaces a good one)."""
    path = memory_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({**remembered(), cloud: root}, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def default_root(cloud: str, user: str | None = None, host: str | None = None) -> str:
    """`<scheme>://spotrun-<user>-<hash8>/runs`: a legal name on GCS and S3 (3-63 characters of
    lowercase letters, digits and dashes, starting and ending with a letter or digit)."""
    user = user or getpass.getuser()
    host = host or socket.gethostname()
    digest = hashlib.sha256(f"{user}@{host}".encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", user.lower()).strip("-")[:30] or "user"
    return f"{SCHEME[cloud]}://spotrun-{slug}-{digest}/{PREFIX}"


def choose(cloud: str) -> str:
    """The storage root for a launch on `cloud` that names none. Raises ConfigError where spotrun
    cannot pick one (azure: name an s3:// or gs:// bucket)."""
    if cloud not in SCHEME:
        raise ConfigError(
            f"storage.root: expected storage.root=gs://BUCKET/runs or s3://BUCKET/runs for cloud={cloud} "
            f"(spotrun stores runs on GCS or S3 only, and picks a bucket of your own on gcp and aws)"
        )
    return remembered().get(cloud) or default_root(cloud)


def bucket_of(root: str) -> str:
    return root.split("://", 1)[1].split("/", 1)[0]


def ensure(root: str, endpoint: str | None = None, region: str | None = None) -> bool:
    """Create the bucket of `root` unless it exists; True when it was created. Raises ConfigError
    with the command to run by hand when this account may not create it."""
    fs = _creator(root, endpoint, region)
    bucket = bucket_of(root)
    with contextlib.suppress(OSError):  # no right to look: try to create it, which says why
        if fs.get_file_info(bucket).type != pafs.FileType.NotFound:
            return False
    try:
        fs.create_dir(bucket, recursive=False)
    except OSError as e:
        how = "gcloud storage buckets create" if root.startswith("gs://") else "aws s3 mb"
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError(
            f"storage.root={root!r}: could not create the bucket ({first}); create it with "
            f"`{how} {root.split('/runs')[0]}` or pass storage.root=<your bucket>"
        ) from None
    return True


def _creator(root: str, endpoint: str | None, region: str | None) -> pafs.FileSystem:
    """A filesystem allowed to create buckets: pyarrow's S3 refuses unless told so; GCS's
    bucket creation uses the project of the credentials (or GOOGLE_CLOUD_PROJECT)."""
    if root.startswith("gs://"):
        return _gcs_creator(root, endpoint)
    kwargs = {
        "allow_bucket_creation": True,
        "region": region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    ep = _endpoint(endpoint, "AWS_ENDPOINT_URL")  # the same endpoint rules as spotrun.core.storage
    if ep:
        kwargs.update(endpoint_override=ep[0], scheme=ep[1])
    return pafs.S3FileSystem(**kwargs)


def _gcs_creator(root: str, endpoint: str | None) -> pafs.FileSystem:
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT")
    if not project:
        raise ConfigError(
            f"storage.root={root!r}: set GOOGLE_CLOUD_PROJECT (the project the new bucket belongs to) "
            f"or pass storage.root=gs://<your bucket>/runs"
        )
    kwargs = {"project_id": project}
    ep = _endpoint(endpoint, "STORAGE_EMULATOR_HOST")
    if ep:  # emulators take no credentials
        kwargs.update(endpoint_override=ep[0], scheme=ep[1], anonymous=True)
    return pafs.GcsFileSystem(**kwargs)
