"""Cloud metadata notices against a real HTTP server on 127.0.0.1 that answers like each provider."""

from __future__ import annotations

import threading
import time
import urllib.request
from types import SimpleNamespace as NS

import pytest

from spotrun.ops.metadata_server import MetadataServer
from spotrun.recovery.notices import AwsNotice, metadata_source, watch_metadata


@pytest.fixture
def server():
    s = MetadataServer().start()
    yield s
    s.stop()


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_each_cloud_reports_nothing_then_the_notice(server, cloud):
    source = metadata_source(NS(source=cloud, endpoint=server.url), "local")
    assert source.name == cloud
    assert source.check() is None and source.check() is None
    server.reclaim()
    detail = source.check()
    assert detail and ("terminate" in detail or "TRUE" in detail or "Preempt" in detail)
    server.clear()
    assert source.check() is None


def test_auto_follows_the_cloud_and_none_means_sigterm_only():
    assert metadata_source(NS(source="auto", endpoint=None), "local") is None
    assert metadata_source(NS(source="none", endpoint=None), "aws") is None
    assert metadata_source(NS(source="auto", endpoint=None), "aws").base == "http://169.254.169.254"
    assert "metadata.google.internal" in metadata_source(NS(source="auto", endpoint=None), "gcp").url


def test_aws_needs_an_imdsv2_token_and_gets_one(server):
    url = f"{server.url}/latest/meta-data/spot/instance-action"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=2)
    assert e.value.code == 401  # IMDSv1-style requests are refused, as on IMDSv2-only instances
    src = AwsNotice(server.url)
    server.reclaim()
    assert '"action": "terminate"' in src.check()


def test_providers_headers_are_required(server):
    for path in (
        "/computeMetadata/v1/instance/preempted",
        "/metadata/scheduledevents?api-version=2020-07-01",
    ):
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(server.url + path, timeout=2)


class Board:
    """Stands in for the NoticeBoard actor's handle: `post.remote(...)` records the call."""

    def __init__(self):
        self.posted = []
        self.post = NS(remote=lambda source, deadline: self.posted.append((source, deadline)) or None)


def test_watcher_posts_once_and_survives_an_unreachable_server(monkeypatch, server):
    import ray

    monkeypatch.setattr(ray, "get", lambda x: x)  # the board here is in-process, not an actor
    board, stop = Board(), threading.Event()
    dead = metadata_source(NS(source="gcp", endpoint="http://127.0.0.1:9"), "local")
    t_dead = watch_metadata(dead, board, 30, 0.05, stop)
    t_live = watch_metadata(
        metadata_source(NS(source="azure", endpoint=server.url), "local"), board, 30, 0.05, stop
    )
    time.sleep(0.3)
    assert board.posted == [] and t_dead.is_alive() and t_live.is_alive()
    server.reclaim()
    t_live.join(timeout=5)
    assert board.posted == [("azure", 30)] and not t_live.is_alive()
    stop.set()
    t_dead.join(timeout=5)
    assert not t_dead.is_alive()
