"""Shared fixtures: the tiny DAG run once per session, writable copies of the hand-written dataset trees in tests/fixtures/, and a
bounded local HTTP server on 127.0.0.1 that can misbehave (for downloads)."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # set before torch loads OpenMP (here and in every subprocess)
    # Several workers share the cores: OpenMP threads that spin while waiting take the core a busy thread of
    # another worker needs, and a small network then trains many times slower. Waiting threads sleep instead.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import http.server
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]

# pytest-xdist (`-n auto --dist loadfile`, pyproject addopts): a test file is one unit of work, so its module
# fixtures are built once (the tiny DAG once per test run: `tiny_dag`). Files
# start heaviest first (measured serially on 2 cores: the SLURM comparison ≈ 5 min, the workflow tests ≈ 3 min,
# the training tests 1–3 min each), so the long ones do not start last.
_HEAVIEST_FIRST = ("tests/test_slurm.py", "tests/test_workflow.py", "tests/test_rerun.py", "tests/train/test_loop.py",
                   "tests/train/test_faults.py", "tests/test_gpu_check.py", "tests/report/test_figures.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.relative_to(REPO).as_posix(), len(rank)))  # stable otherwise


@pytest.fixture(scope="session")
def tiny_dag(tmp_path_factory) -> tuple[Path, tuple[str, ...]]:
    """The whole DAG run once on tiny twins (``tests.test_workflow.TINY``), shared by the end-to-end and
    DAG-declaration tests and used as the local reference of the SLURM comparison; returns the working
    directory and the ``--configfile`` arguments. Tests only read it (a test that deletes files works on a copy).

    Built once per test run, not once per pytest-xdist worker: the first worker to need it builds it under a
    file lock in the run's shared temporary folder, the others wait and reuse it (a failed build is reported
    to each of them, not retried)."""
    from filelock import FileLock

    from tests.test_workflow import DEMO, TINY, snakemake

    worker_tmp = tmp_path_factory.getbasetemp()
    shared = worker_tmp.parent if os.environ.get("PYTEST_XDIST_WORKER") else worker_tmp
    workdir = shared / "tiny-dag"
    args = ("--configfile", DEMO, str(workdir / "tiny.yaml"))
    built, failed = shared / "tiny-dag.built", shared / "tiny-dag.failed"
    with FileLock(str(shared / "tiny-dag.lock")):
        if not built.exists() and not failed.exists():
            try:
                workdir.mkdir()
                (workdir / "tiny.yaml").write_text(TINY)
                done = snakemake(workdir, "--cores", "2", *args, timeout=1200)
            except BaseException as error:  # a timeout or an interrupt: recorded for the other workers too
                failed.write_text(f"building the tiny DAG raised {error!r}")
                raise
            (built if done.returncode == 0 else failed).write_text(done.stderr[-3000:])
    assert built.exists(), f"the tiny DAG failed:\n{failed.read_text()}"
    return workdir, args


@pytest.fixture
def veri_root(tmp_path: Path) -> Path:
    """A copy of the hand-written VeRi-776 tree (gb2312 XML, typeID 0 bug, CRLF files)."""
    return Path(shutil.copytree(FIXTURES / "veri", tmp_path / "VeRi"))


@pytest.fixture
def vehicleid_root(tmp_path: Path) -> Path:
    """A copy of the hand-written VehicleID tree (sparse attributes, CRLF colour names)."""
    return Path(shutil.copytree(FIXTURES / "vehicleid", tmp_path / "VehicleID_V1.0"))

# --------------------------------------------------------------------------------------------


@dataclass
class Behaviour:
    """How the test server answers; tests mutate it before downloading."""

    files: dict[str, bytes] = field(default_factory=dict)
    truncate_first: int | None = None  # first request: send only this many body bytes, then close
    ignore_range: bool = False  # always answer 200 with the whole file
    fail_status: int | None = None  # answer with this status ...
    fail_times: int = 0  # ... this many times (then behave)
    no_length: bool = False  # send no Content-Length: the body ends when the connection closes (HTTP/1.0)
    requests: list[dict] = field(default_factory=list)  # path and Range header of every request


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "agnet-test/1"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        b: Behaviour = self.server.behaviour
        b.requests.append({"path": self.path, "range": self.headers.get("Range")})
        if b.fail_status is not None and b.fail_times > 0:
            b.fail_times -= 1
            self.send_error(b.fail_status)
            return
        data = b.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and not b.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if not b.no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if b.truncate_first is not None:
            cut, b.truncate_first = b.truncate_first, None
            self.wfile.write(body[:cut])
            self.close_connection = True  # declared length is larger (or none declared): an early close
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    """A bounded local HTTP server: yields (base_url, Behaviour); always shut down at teardown."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.behaviour = Behaviour()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(60.0, httpd.shutdown)  # stops by itself even if teardown is skipped
    watchdog.daemon = True
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.behaviour
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
