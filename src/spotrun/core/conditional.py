"""Create-if-absent for each store: the one atomic primitive a lease needs (spotrun.recovery.lease).

pyarrow.fs cannot write conditionally, so each store goes through its own API: a hard link on local
disk, S3's conditional PUT, GCS's generation precondition. Each returns True when this call created
the object and False when one already existed; a store error is an OSError (retried by the caller).
"""

from __future__ import annotations

import json
import os
import posixpath
import urllib.error
import urllib.request
import uuid
from urllib.parse import quote


def write_synced(path: str, data: bytes) -> None:
    """Write a local file and fsync it (the temp copy a rename or link then publishes whole)."""
    os.makedirs(posixpath.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def create_local(path: str, data: bytes) -> bool:
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    write_synced(tmp, data)
    try:
        os.link(tmp, path)  # fails with EEXIST if the name exists; never replaces
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


def create_s3(path: str, data: bytes, endpoint: str | None, region: str) -> bool:
    """`If-None-Match: *`: S3 refuses the PUT with 412 when the key exists."""
    import boto3  # only leases need the S3 API itself; boto3 reads AWS_ENDPOINT_URL and the keys
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = path.split("/", 1)
    client = boto3.client("s3", endpoint_url=endpoint or None, region_name=region)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as e:
        if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
            return False  # 412: the object exists; 409: a concurrent conditional write won
        raise OSError(f"s3 conditional put {path}: {e}") from e
    except BotoCoreError as e:
        raise OSError(f"s3 conditional put {path}: {e}") from e
    return True


def create_gcs(path: str, data: bytes, emulator: str | None) -> bool:
    """A multipart upload with `ifGenerationMatch=0` (the JSON API): refused with 412 when the
    object exists. `emulator`: its base URL (no credentials), or None for Google's own."""
    bucket, key = path.split("/", 1)
    base = emulator or "https://storage.googleapis.com"
    boundary = uuid.uuid4().hex
    body = b"".join(
        [
            f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode(),
            json.dumps({"name": key}).encode(),
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    headers = {"Content-Type": f"multipart/related; boundary={boundary}"}
    if not emulator:
        headers["Authorization"] = f"Bearer {_gcs_token()}"
    url = f"{base}/upload/storage/v1/b/{quote(bucket, safe='')}/o?uploadType=multipart&ifGenerationMatch=0"
    try:
        urllib.request.urlopen(urllib.request.Request(url, body, headers, method="POST"), timeout=30).read()
    except urllib.error.HTTPError as e:
        if e.code == 412:
            return False
        raise OSError(f"gcs conditional upload {path}: HTTP {e.code}") from e
    except urllib.error.URLError as e:
        raise OSError(f"gcs conditional upload {path}: {e.reason}") from e
    return True


def _gcs_token() -> str:
    """An OAuth token: google-auth's default credentials when installed, else the VM's service
    account from the metadata server (what a GCP VM has). Never logged."""
    try:
        import google.auth
        import google.auth.transport.requests
    except ImportError:
        url = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
        req = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
        try:
            return json.loads(urllib.request.urlopen(req, timeout=5).read())["access_token"]
        except (OSError, ValueError, KeyError) as e:
            raise OSError("gcs: no credentials for a conditional upload (install google-auth)") from e
    creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
    creds.refresh(google.auth.transport.requests.Request())
    return creds.token
