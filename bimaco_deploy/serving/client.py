"""``bimaco-deploy infer --server URL``: super-resolve files through a Triton server.

The file side (inputs checked before anything is written, progress, atomic PNG writes) is
the local ``infer``'s own (:func:`~bimaco_deploy.pipeline.infer.infer_files`); only the image
goes to the server: uint8 LR [1, H, W, 3] and the seed to ``bimacosr_tiled``, uint8 SR back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from ..errors import BackendUnavailable, InputError, ServerError
from ..pipeline.infer import InferItem, InferReport, check_inputs, infer_files
from ..progress import Progress
from . import names as N

PathLike = Union[str, Path]


def parse_url(url: str) -> Tuple[str, str]:
    """``http://host:port``, ``grpc://host:port`` or ``host:port`` (HTTP) -> (protocol, host:port)."""
    for proto in ("http", "grpc"):
        if url.startswith(f"{proto}://"):
            address = url[len(proto) + 3 :].rstrip("/")
            break
    else:
        if "://" in url:
            raise InputError(f"--server {url!r}: the scheme must be http:// or grpc://")
        proto, address = "http", url.rstrip("/")
    if not address or "/" in address:
        raise InputError(f"--server {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")
    return proto, address


def _client_module(proto: str) -> Any:
    try:
        if proto == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
    except ImportError as e:
        raise BackendUnavailable(f"tritonclient is not installed: pip install 'bimaco-deploy[serve]' ({e})") from e
    return mod


class RemoteSR:
    """``sr = RemoteSR(url)(lr_uint8, seed)``: one image through a server's model (default the tiler)."""

    def __init__(self, url: str, *, model: str = N.TILED, timeout_s: float = 3600.0):
        self.url = url
        self.proto, self.address = parse_url(url)
        self.model = model
        self.mod = _client_module(self.proto)
        kw = {"network_timeout": timeout_s, "connection_timeout": 60.0} if self.proto == "http" else {}
        try:
            self.client = self.mod.InferenceServerClient(self.address, **kw)
            ready = self.client.is_server_ready() and self.client.is_model_ready(model)
        except Exception as e:  # connection errors come in the transport library's own types
            raise ServerError(f"{url}: cannot reach the server ({type(e).__name__}: {e})") from e
        if not ready:
            raise ServerError(f"{url}: the server is not ready or has no ready model '{model}'")
        self.timeout_s = timeout_s

    def __call__(self, lr: np.ndarray, seed: int = 0) -> np.ndarray:
        if lr.dtype != np.uint8 or lr.ndim != 3 or lr.shape[2] != 3:
            raise InputError(f"expected a uint8 [H, W, 3] image, got {lr.dtype} {lr.shape}")
        mod = self.mod
        image = mod.InferInput(N.LR, [1, *lr.shape], "UINT8")
        image.set_data_from_numpy(np.ascontiguousarray(lr[None]))
        s = mod.InferInput(N.SEED, [1, 1], "INT64")
        s.set_data_from_numpy(np.array([[seed]], dtype=np.int64))
        outputs = [mod.InferRequestedOutput(N.SR)]
        from tritonclient.utils import InferenceServerException

        try:
            kw = {"client_timeout": self.timeout_s} if self.proto == "grpc" else {}
            result = self.client.infer(self.model, [image, s], outputs=outputs, **kw)
        except InferenceServerException as e:
            raise ServerError(f"{self.url}: {e.message() or e}") from e
        except Exception as e:
            raise ServerError(f"{self.url}: request failed ({type(e).__name__}: {e})") from e
        sr = result.as_numpy(N.SR)
        if sr is None or sr.ndim != 4 or sr.dtype != np.uint8:
            raise ServerError(f"{self.url}: model '{self.model}' returned no uint8 SR image")
        return sr[0]

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass


def infer_server(url: str, inputs: PathLike, output: PathLike, *, seed: int = 0,
                 progress: Union[bool, Progress, None] = True, force: bool = False,
                 on_item: Optional[Callable[[InferItem], None]] = None, report_path: Optional[PathLike] = None,
                 run_info: Optional[Dict[str, Any]] = None, model: str = N.TILED,
                 timeout_s: float = 3600.0) -> InferReport:
    """Super-resolve ``inputs`` (a file or folder) into ``output`` through the server at ``url``:
    the same inputs, outputs, checks, progress and report as local :func:`~bimaco_deploy.pipeline.infer.infer`
    (the server tiles large images itself)."""
    check_inputs(inputs, output, force=force)  # bad inputs fail before the server is contacted
    remote = RemoteSR(url, model=model, timeout_s=timeout_s)
    try:
        return infer_files(lambda img, _prog, _name: (remote(img, seed), 1), inputs, output, progress=progress,
                           force=force, on_item=on_item, report_path=report_path, run_info=run_info)
    finally:
        remote.close()


def server_ready(url: str, model: Optional[str] = None) -> bool:
    """Whether the server at ``url`` is ready (and has ``model`` ready)."""
    try:
        remote = RemoteSR(url, model=model or N.TILED, timeout_s=10.0)
    except ServerError:
        return False
    remote.close()
    return True
