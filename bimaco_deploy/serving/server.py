"""A real Triton Inference Server on this machine: the ``tritonserver`` that ``nvidia-pytriton``
bundles (2.51, Python backend only), started on a model repository and stopped cleanly.

What the launcher sets up, because the bundled binary does not on its own:

* a backend folder holding the Python backend and the stub built for this interpreter's
  Python version (the wheel ships one stub per version);
* ``LD_LIBRARY_PATH`` with this interpreter's library folder (``sysconfig`` ``LIBDIR``)
  first: the stub loads ``libpython3.X`` through the dynamic loader, which otherwise finds
  the system's own libpython, without our packages;
* the server's own bundled libraries (``nvidia_pytriton.libs``).

The stub ignores ``PYTHONPATH``: the launcher passes this interpreter's import path as
``$BIMACO_PYTHON_PATH``, which the generated ``model.py`` puts first on ``sys.path`` (see
:mod:`.triton_model`), so the server's stages run the very package that started it.

:func:`serve` is ``bimaco-deploy serve``: a Python-variant repository (or a given one), the
server on it, health and readiness polled until it serves, then running until SIGINT or
SIGTERM, and a clean stop.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

from ..errors import BackendUnavailable, ServerError

PathLike = Union[str, Path]
INSTALL_HINT = "pip install 'bimaco-deploy[serve]' (nvidia-pytriton bundles tritonserver, tritonclient is the client)"


@dataclass(frozen=True)
class TritonDist:
    """Where the bundled server's pieces are."""

    server: Path  # bin/tritonserver
    python_backend: Path  # backends/python (libtriton_python.so, triton_python_backend_utils.py)
    stub: Path  # the triton_python_backend_stub for this Python version
    libs: Path  # the server's bundled shared libraries


def bundled_tritonserver() -> TritonDist:
    """The tritonserver of the installed ``nvidia-pytriton`` wheel (without importing pytriton)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(f"nvidia-pytriton is not installed: {INSTALL_HINT}")
    root = Path(list(spec.submodule_search_locations)[0])
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    dist = TritonDist(
        server=root / "tritonserver" / "bin" / "tritonserver",
        python_backend=root / "tritonserver" / "backends" / "python",
        stub=root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=root.parent / "nvidia_pytriton.libs",
    )
    for what, path in (("tritonserver", dist.server), ("the Python backend", dist.python_backend / "libtriton_python.so")):
        if not path.is_file():
            raise BackendUnavailable(f"{path}: {what} of nvidia-pytriton is missing (a broken install?); {INSTALL_HINT}")
    if not dist.stub.is_file():
        have = sorted(p.name for p in dist.stub.parent.parent.iterdir()) if dist.stub.parent.parent.is_dir() else []
        raise BackendUnavailable(f"nvidia-pytriton has no Python backend stub for Python {version} (it has {have})")
    return dist


def python_library_dir() -> Path:
    """This interpreter's shared-library folder; raises when Python was built without libpython.so."""
    libdir = Path(sysconfig.get_config_var("LIBDIR") or "")
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not (libdir / soname).is_file():
        raise BackendUnavailable(
            f"Triton's Python backend stub loads libpython{sys.version_info[0]}.{sys.version_info[1]} as a shared "
            f"library, and this interpreter ({sys.executable}) has none in {libdir}; use a Python built with "
            "--enable-shared (the distribution's python3, or pyenv with PYTHON_CONFIGURE_OPTS=--enable-shared)"
        )
    return libdir


def package_python_path() -> List[str]:
    """The folders a server's Python stages must import from to run this very package: its root
    first, then this interpreter's own import path (a venv's site-packages included)."""
    import bimaco_deploy

    root = str(Path(bimaco_deploy.__file__).resolve().parents[1])
    rest = [p for p in sys.path if p and p != root and Path(p).is_dir()]
    return [root, *rest]


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


class TritonServer:
    """The bundled tritonserver on ``repository``, listening on ``host`` only.

    Use as a context manager, or :meth:`start` / :meth:`stop`. The server runs in its own
    process group (its Python stubs are its children), so :meth:`stop` can end all of it.
    Its log goes to ``log_path`` (a temporary file by default); errors quote its tail.
    """

    def __init__(self, repository: PathLike, *, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: Optional[int] = None, host: str = "127.0.0.1", log_path: Optional[PathLike] = None,
                 exit_timeout_s: int = 30, log_verbose: int = 0, dist: Optional[TritonDist] = None,
                 backend_dir: Optional[PathLike] = None, extra_args: Sequence[str] = ()):
        self.repository = Path(repository)
        self.dist = dist  # None: the bundled server (see bundled_tritonserver)
        self.backend_dir = Path(backend_dir) if backend_dir else None  # e.g. /opt/tritonserver/backends
        self.extra_args = list(extra_args)  # e.g. --backend-config=tensorrt,plugins=...
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.host = host
        self.exit_timeout_s = exit_timeout_s
        self.log_verbose = log_verbose
        self._tmp = tempfile.TemporaryDirectory(prefix="bimaco-triton-")
        self.log_path = Path(log_path) if log_path else Path(self._tmp.name) / "tritonserver.log"
        self.proc: Optional[subprocess.Popen] = None
        self._log: Any = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    def command(self, backend_dir: Path, dist: TritonDist) -> List[str]:
        """The tritonserver command line."""
        cmd = [
            str(dist.server), f"--model-repository={self.repository}", f"--backend-directory={backend_dir}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--exit-timeout-secs={self.exit_timeout_s}", f"--log-verbose={self.log_verbose}",
            # each stub's shared-memory pool starts large enough for a 256 px tile's SR (12 MiB)
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=16777216",
            # a stage building the published model from a checkpoint takes minutes on a small CPU
            "--backend-config=python,stub-timeout-seconds=600",
        ]
        if self.metrics_port is None:
            cmd.append("--allow-metrics=false")
        else:
            cmd += [f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        return cmd + self.extra_args

    def environment(self, dist: TritonDist) -> dict:
        env = dict(os.environ)
        parts = [str(python_library_dir()), str(dist.libs)] if self.backend_dir is None else []
        if env.get("LD_LIBRARY_PATH"):
            parts.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(parts)
        env["BIMACO_PYTHON_PATH"] = json.dumps(package_python_path())
        # every stage is a process with its own OpenMP pool; busy-waiting pools of concurrently
        # running stages starve each other on a small CPU (measured on 2 cores, 4 clients:
        # 0.97 images/s and p99 10.5 s with the default spin policy), so idle threads sleep
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return env

    def _backend_dir(self, dist: TritonDist) -> Path:
        """backends/python with this Python's stub beside the backend (links, not copies)."""
        d = Path(self._tmp.name) / "backends" / "python"
        d.mkdir(parents=True, exist_ok=True)
        for src in (*sorted(p for p in dist.python_backend.iterdir() if p.is_file()), dist.stub):
            dst = d / src.name
            if not dst.exists():
                os.symlink(src, dst)
        return d.parent

    def start(self, ready_timeout_s: float = 300.0, stop: Optional[threading.Event] = None) -> "TritonServer":
        """Start the server and wait until it is ready (every model loaded), or until ``stop`` is set."""
        if not self.repository.is_dir():
            raise ServerError(f"{self.repository}: model repository not found")
        dist = self.dist or bundled_tritonserver()
        env = self.environment(dist)
        cmd = self.command(self.backend_dir or self._backend_dir(dist), dist)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        try:
            self.wait_ready(ready_timeout_s, stop)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def is_ready(self) -> bool:
        return _get(f"{self.http_url}/v2/health/ready") == 200

    def is_live(self) -> bool:
        return _get(f"{self.http_url}/v2/health/live") == 200

    def wait_ready(self, timeout_s: float, stop: Optional[threading.Event] = None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.proc.returncode} while starting; its log "
                                  f"({self.log_path}) ends:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise ServerError(f"tritonserver was not ready after {timeout_s:.0f} s; its log ({self.log_path}) ends:\n"
                          f"{self.log_tail()}")

    def stop(self, timeout_s: Optional[float] = None) -> Optional[int]:
        """SIGTERM (tritonserver waits for in-flight requests and unloads its models), then
        SIGKILL to the whole process group after ``timeout_s`` (default: the server's own exit
        timeout + 15 s, so that it can finish by itself). Returns the exit code."""
        # unloading the Python stages' models took over 10 s on a busy 2-core machine: Triton then
        # gave up with "Exit timeout expired" and exit code 1; its default is 30 s
        timeout_s = self.exit_timeout_s + 15.0 if timeout_s is None else timeout_s
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            code = proc.returncode
            try:  # stubs that outlived their server
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> "TritonServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve(
    *,
    repository: Optional[PathLike] = None,
    config: Optional[str] = None,
    ckpt: Optional[PathLike] = None,
    vq_ckpt: Optional[PathLike] = None,
    backend: str = "torch",
    artifacts: Optional[PathLike] = None,
    seed: int = 0,
    vq_dtype: Optional[str] = None,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    max_batch: int = 4,
    instances: int = 1,
    tile: int = 256,
    max_size: int = 1024,
    ready_timeout_s: float = 600.0,
    log_path: Optional[PathLike] = None,
    on_ready: Optional[Callable[[TritonServer], None]] = None,
    stop: Optional[threading.Event] = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Serve the SR pipeline until SIGINT/SIGTERM (or ``stop`` is set); returns the server's exit code.

    ``repository``: serve that repository as it is; otherwise one is written to a temporary
    folder: the Python variant with ``backend`` torch (packed 1-bit UNet on our kernels, torch
    autoencoder; ``config`` + ``ckpt``/``vq_ckpt``, None: seeded random weights) or onnxruntime
    (``artifacts`` of an export; exported to the temporary folder when not given).
    """
    from .repository import write_repository

    stop = stop or threading.Event()
    with tempfile.TemporaryDirectory(prefix="bimaco-serve-") as tmp:
        if repository is None:
            if config is None:
                raise ServerError("serve needs --config (or --repository of a written model repository)")
            if backend == "onnxruntime" and artifacts is None:
                from ..export.exporter import export

                echo("exporting the model for ONNX Runtime ...")
                artifacts = Path(tmp) / "artifacts"
                export(config, ckpt, artifacts, vq_ckpt=vq_ckpt, seed=seed, print_report=False, with_vq=True)
            repository = Path(tmp) / "repository"
            write_repository(repository, backend="python", runtime=backend, config=config, ckpt=ckpt, vq_ckpt=vq_ckpt,
                             artifacts=artifacts, seed=seed, vq_dtype=vq_dtype, max_batch=max_batch,
                             instances=instances, tile=tile, max_size=max_size, link_files=False)
        server = TritonServer(repository, http_port=http_port, grpc_port=grpc_port, host=host, log_path=log_path)
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            echo(f"starting tritonserver on {repository} (log: {server.log_path}) ...")
            server.start(ready_timeout_s, stop)
            if not stop.is_set():
                echo(f"ready: HTTP {server.http_url}  gRPC {server.grpc_url}  (health: {server.http_url}/v2/health/ready); "
                     "Ctrl-C to stop")
            if on_ready is not None and not stop.is_set():
                on_ready(server)
            while not stop.wait(0.5):
                if server.proc is None or server.proc.poll() is not None:
                    code = server.proc.returncode if server.proc is not None else None
                    raise ServerError(f"tritonserver exited unexpectedly (code {code}); its log ends:\n{server.log_tail()}")
            echo("stopping tritonserver ...")
            code = server.stop()
            echo(f"tritonserver stopped (exit code {code})")
            if code:  # e.g. clients still connected after the exit timeout: Triton then cuts them off
                echo(f"its log ends: {server.log_tail(1)}")
            return code or 0
        finally:
            server.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
