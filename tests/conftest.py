"""Test session setup: Prefect state in a temp dir, no analytics, one shared Prefect test harness, an S3 server."""

import os
import subprocess
import sys
import tempfile
import urllib.request
import uuid

import pytest
from servers import free_port, stop_process_group, wait_until

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="sparselens-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session; only tests that run flows ask for it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """An S3-compatible server (moto's server mode) on 127.0.0.1 in its own process, stopped by PID at the end.

    Yields the standard AWS environment (AWS_ENDPOINT_URL, keys, region) that points s3fs, pyarrow, DuckDB's
    fsspec bridge and polars at it. Skips, saying why, only when moto[server] or s3fs is missing or moto cannot
    start; `pip install -e '.[dev]'` installs both.
    """
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as e:
        pytest.skip(f"S3 tests need moto[server] and s3fs ({e}); install them with pip install -e '.[dev]'")
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until(lambda: _answers(f"{url}/moto-api/"), f"moto S3 server on {url}", 60, proc)
        except (TimeoutError, RuntimeError) as e:
            pytest.skip(f"moto's S3 server could not start ({e}): {log_path.read_text()[-2000:]}")
        yield {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "sparselens-test",
            "AWS_SECRET_ACCESS_KEY": "sparselens-test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    finally:
        stop_process_group(proc)


@pytest.fixture
def s3_root(s3_server, monkeypatch):
    """`s3://<fresh bucket>/prefix` on the test S3 server, with the AWS environment set for this test."""
    import s3fs

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"sparselens-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(bucket)
    yield f"s3://{bucket}/prefix"
    s3fs.S3FileSystem.clear_instance_cache()
