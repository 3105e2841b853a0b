"""`make demo`: the whole path on the bundled tiny model, in under a minute on 2 CPU cores.

1. inspect the published BiMaCoSR config (sizes, compression, no weights needed);
2. export the tiny model to packed 1-bit ONNX (custom nodes + portable twin + VQ graphs);
3. check the ONNX Runtime backend against the PyTorch reference (three parity levels);
4. super-resolve the calibration photographs with the packed 1-bit torch backend.

Weights: the original research code's reduced fixtures when they sit beside the checkout
(``../shared/fixtures/bimacosr-tiny`` or ``$BIMACO_FIXTURES``), else seeded random weights.
Either way the model is untrained, so the SR images show structure-free texture: no trained
BiMaCoSR weights can be shipped here. Outputs go to ``out/demo/``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Tuple

from rich.console import Console

from .errors import BimacoError

REPO = Path(__file__).resolve().parents[1]


def _tiny_weights() -> Tuple[str, Optional[Path], Optional[Path]]:
    root = Path(os.environ.get("BIMACO_FIXTURES", REPO.parent / "shared" / "fixtures")) / "bimacosr-tiny"
    if (root / "bimacosr_tiny.pth").is_file() and (root / "vqgan.pth").is_file():
        return str(root / "config.yaml"), root / "bimacosr_tiny.pth", root / "vqgan.pth"
    return "bimacosr-tiny", None, None


def run(out: Path = REPO / "out" / "demo") -> int:
    """Run the demo; returns a process exit code."""
    from .export.exporter import export
    from .models import load_config
    from .models.inventory import inventory, render_inventory
    from .backends import BackendSpec
    from .pipeline.factory import make_pipeline
    from .pipeline.infer import infer
    from .check.parity import check, render_check_report

    console = Console()
    config, ckpt, vq_ckpt = _tiny_weights()
    console.rule("1. the published model: what it holds and what it should cost deployed")
    console.print(render_inventory(inventory(load_config("bimacosr"))))

    console.rule(f"2. export the tiny model ({'fixture checkpoints' if ckpt else 'seeded random weights'})")
    artifacts = out / "artifacts"
    export(config, ckpt, artifacts, vq_ckpt=vq_ckpt, force=True, console=console, print_report=False,
           with_vq=True)
    for f in sorted(artifacts.iterdir()):
        console.print(f"  {f.name:24s} {f.stat().st_size:>12,d} bytes")

    console.rule("3. parity: ONNX Runtime (portable ONNX) vs the PyTorch reference")
    report = check(config, ckpt, artifacts, backend="onnxruntime", vq_ckpt=vq_ckpt)
    render_check_report(report, console)

    console.rule("4. super-resolve the calibration photographs with the packed 1-bit torch backend")
    spec = BackendSpec("torch", load_config(config), ckpt=ckpt, seed=0)
    pipe = make_pipeline(spec, vq_ckpt, vq_precision="fp32")
    result = infer(pipe, REPO / "calib" / "images", out / "sr", seed=0, force=True)  # the demo's own folder
    for item in result.items:
        console.print(f"  {item.input.name} -> {item.output}  ({item.seconds:.2f} s)")
    console.rule("done")
    console.print(f"artifacts in {artifacts}, SR images in {out / 'sr'}; parity {'PASS' if report['passed'] else 'FAIL'}")
    return 0 if report["passed"] else 1


def main() -> None:
    try:
        sys.exit(run())
    except BimacoError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
