"""``bimaco-deploy check``: three-level parity against the PyTorch reference."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import EXIT_PARITY_FAILED, InputError
from ._app import CALIB_HELP, CONFIG_HELP, VQ_PRECISION_HELP, command, config_for, note, outputs, progress


@command()
def check(
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", "-a", help="Directory written by `bimaco-deploy export` (onnxruntime, tensorrt)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    unet_ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="UNet checkpoint of the reference (and of --backend torch); none: the same seeded random init."),
    vq_ckpt: Optional[Path] = typer.Option(None, "--vq-ckpt", help="VQ checkpoint for level 3; none: random weights."),
    backend: str = typer.Option("onnxruntime", "--backend", "-b", help="onnxruntime (--artifacts) | torch (packed CPU kernels, --isa) | tensorrt (--artifacts)."),
    images: Optional[List[Path]] = typer.Option(None, "--images", help="LR image or folder for level 3 (repeatable; default calib/images). An empty folder is an error."),
    levels: str = typer.Option("1,2,3", "--levels", help="Comma-separated levels to run: 1 layers, 2 whole model, 3 SR pipeline."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random init and of the noise."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", help="Level 1 only for this binary layer (repeatable)."),
    min_psnr: Optional[float] = typer.Option(
        None, "--min-psnr", help="Level 3 threshold in dB (default: report only): the backend's SR image vs the "
        "reference's, and with --vq-precision the low-precision autoencoder's SR image (UNet held fixed) vs fp32."),
    vq_precision: Optional[str] = typer.Option(None, "--vq-precision", help=VQ_PRECISION_HELP + " Level 3 compares "
                                               "it with the fp32 autoencoder."),
    calib: Optional[Path] = typer.Option(None, "--calib", help=CALIB_HELP),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="Relative tolerance of levels 1 and 2 (default 1e-5; fp16 artifacts 2e-2): pass when max|diff| <= atol + rtol * max|ref|."),
    atol: float = typer.Option(0.0, "--atol", help="Absolute tolerance added to --rtol (default 0)."),
    isa: Optional[str] = typer.Option(None, "--isa", help="--backend torch: CPU instruction set of the kernels (scalar, popcnt, avx2, avx512, neon ...), or 'all' this CPU runs."),
    plugin: Optional[Path] = typer.Option(None, "--plugin", help="libbimaco_trt_plugin.so (tensorrt backend)."),
    save_inputs: Optional[Path] = typer.Option(None, "--save-inputs", help="Folder for the inputs each level fed (level1.npz, level2.npz, level3.npz), to reproduce a failure."),
    save_outputs: Optional[Path] = typer.Option(None, "--save-outputs", help="Folder for the reference and backend outputs of each level (npz)."),
    no_explain: bool = typer.Option(False, "--no-explain", help="Level 2: do not try to explain a divergence by forcing near-zero flips."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file and --save-* folders."),
) -> None:
    """Three-level parity of a backend against the PyTorch reference; exit 1 when a threshold fails."""
    from ..check.parity import Thresholds, check as run_check, check_isas, parse_levels, render_check_report
    from ..models.precision import parse_precision
    from ..reports import write_json_atomic

    lv = parse_levels(levels)
    precision = parse_precision(vq_precision)
    for name, value in (("--rtol", rtol), ("--atol", atol)):
        if value is not None and value < 0:
            raise InputError(f"{name} {value}: must be >= 0")
    outputs((json_out, dict(option="--json", kind="file", force=force, suffixes=(".json",))),
            (save_inputs, dict(option="--save-inputs", kind="dir", force=force)),
            (save_outputs, dict(option="--save-outputs", kind="dir", force=force)))
    if save_inputs is not None and save_outputs is not None and save_inputs.resolve() == save_outputs.resolve():
        raise InputError(f"--save-inputs and --save-outputs name the same folder {save_inputs}; give two folders")
    cfg = config_for(config, artifacts)
    th = Thresholds(min_psnr_db=min_psnr, rtol=rtol, atol=atol)
    common = dict(images=images, vq_ckpt=vq_ckpt, seed=seed, levels=lv, device=device, layers=layer, thresholds=th,
                  explain=not no_explain, progress=progress(), save_inputs=save_inputs, save_outputs=save_outputs,
                  plugin_lib=plugin, vq_precision=precision, calib=calib, say=note)
    if isa == "all":
        if backend != "torch":
            raise InputError(f"--isa all is for --backend torch (the packed CPU kernels), not {backend}")
        if artifacts is not None:
            raise InputError(f"--artifacts {artifacts} is not used by --backend torch (it builds the UNet from "
                             "--config and --ckpt); drop it")
        report = check_isas(cfg, unet_ckpt, **common)
    else:
        report = run_check(cfg, unet_ckpt, artifacts, backend=backend, isa=isa, **common)
    render_check_report(report)
    if json_out is not None:
        write_json_atomic(json_out, report)
        note(f"wrote {json_out}")
    if not report["passed"]:
        raise typer.Exit(code=EXIT_PARITY_FAILED)
