"""``bimaco-deploy check``: does a backend reproduce the PyTorch reference? Three levels.

Binarized activations make whole-model outputs chaotic under rounding (DESIGN.md,
"Parity"), so parity is judged at three levels:

1. **Teacher-forced layers.** Every binary layer of the backend is run on its
   own (for ONNX Runtime: cut out of the artifact's graph, from the layer's input
   tensor to its output tensor) and fed the reference's own input; its output
   must match the reference's to float tolerance, and any output sign
   disagreement must sit at an element whose margin is below that tolerance.
2. **Whole model** on fixture-like inputs (seeded normal x, uniform lq, the
   one-step timestep): the sign pattern of every binary layer's input is
   compared with the reference; the first flip is classified by its margin
   ``|x| / s``: below ``fragile_margin`` it is float-rounding noise (the output
   may then diverge, and is reported), otherwise it is a bug. Without a flip
   the output must match tightly.
3. **SR pipeline** on real LR images (``calib/images``): per-layer sign-flip
   rates and the PSNR of the backend's SR image against the reference's. With a
   low-precision autoencoder (``--vq-precision`` fp16 / bf16 / int8), also the SR image
   of the pipeline with that autoencoder against the fp32 reference pipeline
   (:func:`level3_autoencoder`): PSNR and max error with the UNet held fixed (the
   autoencoder's own error), end to end, the latent error of the encoder and the
   fraction of codebook indices that change.

Tolerances are never loosened to hide a flip: flips are counted and shown. A
level-2 case that diverges after a near-zero flip is re-run on the reference with
the backend's signs forced at its fragile activations
(:func:`~bimaco_deploy.models.probes.explain_backend_divergence`); it passes only when
that reproduces the backend's output, and the row says so ("explained: 2 flips,
margin <= 4.0e-07"). Every
level-3 row says why it passes or fails. Nothing checked is a failure: unknown
levels and an empty image folder are refused before any work starts.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..backends import BackendSpec, ParityRunner, get_backend, make_backend, resolve_config
from ..errors import ArtifactError, InputError
from ..progress import Progress

PathLike = Union[str, Path]


@dataclass
class Thresholds:
    """Pass/fail limits of the three levels."""

    layer_rel: float = 1e-5  # level 1: max |diff| / max |ref| per layer (float32 artifacts)
    layer_rel_fp16: float = 2e-2  # level 1 for float16 artifacts
    fragile_margin: float = 1e-4  # a flip at |x|/s below this is rounding noise, not a bug
    # float16 artifacts round activations to ~5e-4 relative: elements within a few half-ulps flip
    fragile_margin_fp16: float = 2e-3
    model_rel: float = 1e-5  # level 2: max |diff| / max |ref| when no sign flipped
    # --rtol replaces the relative tolerances above (levels 1 and 2, any dtype); --atol adds an absolute
    # allowance: a layer or case passes when max |diff| <= atol + rtol * max |ref|
    rtol: Optional[float] = None
    atol: float = 0.0
    # level 2: a divergence is explained when forcing the reference to the backend's sign at no more than
    # this many fragile elements reproduces the backend's output
    explain_max_flips: int = 16
    # level 3: backend SR vs reference SR, and the low-precision autoencoder's SR (UNet held fixed)
    # vs the fp32 pipeline's. None: reported, not enforced. An untrained (fixture) model avalanches
    # after one fragile flip (PSNR ~15 dB on calib images), a trained one should not
    min_psnr_db: Optional[float] = None


# --------------------------------------------------------------------------- reference capture


@contextlib.contextmanager
def capture_layers(model: Any, what: str = "both") -> Iterator[Dict[str, Dict[str, np.ndarray]]]:
    """Record each binary layer's input (and output) on its first call, as numpy arrays."""
    from ..models import iter_binary_layers

    store: Dict[str, Dict[str, np.ndarray]] = {}
    handles = []

    def hook(name: str) -> Callable:
        def fn(_m: Any, args: Tuple[Any, ...], out: Any) -> None:
            if name in store:
                return
            entry = {"input": args[0].detach().cpu().numpy().copy()}
            if what == "both":
                entry["output"] = out.detach().cpu().numpy().copy()
            store[name] = entry

        return fn

    for name, layer in iter_binary_layers(model):
        handles.append(layer.register_forward_hook(hook(name)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def margins(x: np.ndarray, rank: int) -> np.ndarray:
    """|x| / s, with s the mean |x| the element is binarized with (conv: over channels; linear: over the row)."""
    axis = 1 if rank == 4 else -1
    s = np.abs(x).mean(axis=axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s > 0, np.abs(x) / s, 0.0)


def sign_flips(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Flat indices where sign(ref) != sign(other) (zero counts as its own sign)."""
    return np.flatnonzero(np.sign(ref).reshape(-1) != np.sign(other).reshape(-1))


def rel_error(ref: np.ndarray, other: np.ndarray) -> Tuple[float, float, float]:
    """(max |diff|, max |diff| / max |ref|, mean |diff| / mean |ref|)."""
    d = np.abs(other.astype(np.float64) - ref.astype(np.float64))
    scale_max = max(float(np.abs(ref).max()), 1e-30)
    scale_mean = max(float(np.abs(ref).mean()), 1e-30)
    return float(d.max()), float(d.max() / scale_max), float(d.mean() / scale_mean)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(peak * peak / mse)


# --------------------------------------------------------------------------- levels

LEVELS = (1, 2, 3)


def _passes(abs_err: float, ref: np.ndarray, rtol: float, atol: float) -> bool:
    """max |diff| <= atol + rtol * max |ref| (with atol 0: max relative error <= rtol)."""
    return abs_err <= atol + rtol * float(np.abs(ref).max())


def level1_layers(ref_layers: Dict[str, Dict[str, np.ndarray]], backend: ParityRunner, ranks: Dict[str, int], tol: float,
                  only: Optional[Sequence[str]] = None, *, atol: float = 0.0,
                  progress: Optional[Progress] = None, saved: Optional[Dict[str, Dict[str, np.ndarray]]] = None,
                  ) -> Dict[str, Any]:
    """Teacher-forced single layers (all of them, or the ``only`` ones), one progress step per layer.
    ``saved`` collects each layer's input and both outputs (for ``--save-inputs/--save-outputs``)."""
    rows = []
    names = backend.layer_names
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise InputError(f"no binary layer named {', '.join(unknown)} in the artifact")
        names = [n for n in names if n in set(only)]
    prog = progress or Progress.quiet()
    with prog.task("level 1: teacher-forced layers", total=len(names), unit="layers") as task:
        for name in names:
            if name not in ref_layers:
                raise ArtifactError(f"the reference model has no binary layer '{name}' (artifact and config disagree)")
            x, y = ref_layers[name]["input"], ref_layers[name]["output"]
            yb = backend.run_layer(name, x).astype(np.float32)
            if yb.shape != y.shape:
                raise ArtifactError(f"layer '{name}': backend output shape {yb.shape}, reference {y.shape}")
            if saved is not None:
                saved[name] = {"input": x, "reference": y, "backend": yb}
            abs_err, max_rel, mean_rel = rel_error(y, yb)
            flips = sign_flips(y, yb)
            m = margins(y, ranks.get(name, y.ndim)).reshape(-1)[flips] if flips.size else np.zeros(0)
            real = int((m >= tol).sum())
            rows.append({
                "name": name, "max_abs": abs_err, "max_rel": max_rel, "mean_rel": mean_rel,
                "sign_disagreements": int(flips.size), "disagreements_above_tol": real,
                "min_disagreement_margin": float(m.min()) if m.size else None,
                "passed": bool(_passes(abs_err, y, tol, atol) and real == 0),
            })
            task.advance(note=name)
    worst = max(rows, key=lambda r: r["max_rel"]) if rows else None
    return {"tolerance": tol, "atol": atol, "layers": rows, "worst": worst["name"] if worst else None,
            "worst_max_rel": worst["max_rel"] if worst else None, "passed": bool(rows) and all(r["passed"] for r in rows)}


def classify_flips(
    ref_inputs: Dict[str, np.ndarray], backend_inputs: Dict[str, np.ndarray], order: Sequence[str], ranks: Dict[str, int],
    fragile: float,
) -> Dict[str, Any]:
    """Per-layer sign flips of binarized inputs; the first one decides noise vs bug."""
    per_layer = []
    first = None
    for name in order:
        r, b = ref_inputs[name], backend_inputs[name]
        if r.shape != b.shape:
            raise ArtifactError(f"layer '{name}': backend input shape {b.shape}, reference {r.shape}")
        flips = sign_flips(r, b)
        per_layer.append({"name": name, "flips": int(flips.size), "elements": int(r.size), "rate": flips.size / max(r.size, 1)})
        if flips.size and first is None:
            m = margins(r, ranks.get(name, r.ndim)).reshape(-1)[flips]
            first = {"layer": name, "count": int(flips.size), "indices": flips[:8].tolist(), "margins": m[:8].tolist(),
                     "max_margin": float(m.max()), "fragile": bool(m.max() < fragile)}
    return {"first_flip": first, "flipped_layers": sum(p["flips"] > 0 for p in per_layer), "per_layer": per_layer}


def fixture_like_inputs(n: int, h: int, w: int, channels: int, lq_channels: int, timestep: int, seed: int):
    """Seeded x ~ N(0, 1), lq ~ U[-1, 1), timesteps = the one-step value (like io.npz)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, channels, h, w)).astype(np.float32)
    lq = rng.uniform(-1, 1, (n, lq_channels, h, w)).astype(np.float32)
    return x, np.full((n,), timestep, np.int64), lq


def explain_case(model: Any, x: np.ndarray, t: np.ndarray, lq: np.ndarray, backend_out: np.ndarray,
                 backend_inputs: Dict[str, np.ndarray], *, fragile_margin: float, atol: float,
                 max_flips: int) -> Dict[str, Any]:
    """Does the reference, forced to the backend's sign at every fragile element (margin below
    ``fragile_margin``) where their binarized inputs disagree, reproduce the backend's output within
    ``atol``? (:func:`~bimaco_deploy.models.probes.explain_backend_divergence`: deterministic, the
    backend says which sign it took.) A non-fragile disagreement on the way is a bug."""
    import torch

    from ..models.probes import explain_backend_divergence

    res = explain_backend_divergence(model, (torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(lq)),
                                     backend_out, backend_inputs, fragile_margin=fragile_margin, atol=atol,
                                     max_flips=max_flips)
    flip_margins = [f[2] for f in res.flips]
    return {"explained": bool(res.explained), "flips": len(res.flips),
            "max_margin": max(flip_margins) if flip_margins else None,
            "max_abs_error_after": res.max_abs_error, "layers": sorted({f[0] for f in res.flips}),
            "blocking": list(res.blocking) if res.blocking else None, "summary": res.summary()}


def _level2_note(row: Dict[str, Any], th: Thresholds) -> str:
    f, e = row["first_flip"], row.get("explanation")
    v = row["verdict"]
    if v == "match":
        return "no sign flip; output within tolerance"
    if v == "mismatch_without_flip":
        return f"no sign flip, yet max rel {row['max_rel']:.1e} is above tolerance"
    if v == "non_fragile_flip":
        return f"first flip in {f['layer']} at margin {f['max_margin']:.1e} >= {th.fragile_margin:.0e}: not rounding noise"
    if e is None:
        return (f"passes on the first flip's margin only: {f['max_margin']:.1e} < {th.fragile_margin:.0e} "
                "(rounding; not explained: --no-explain)")
    return e["summary"]


def level2_model(model: Any, backend: ParityRunner, cases: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                 ranks: Dict[str, int], th: Thresholds, rel_tol: float, *, explain: bool = True,
                 progress: Optional[Progress] = None,
                 saved: Optional[List[Dict[str, np.ndarray]]] = None) -> Dict[str, Any]:
    """The whole model on ``cases``. A divergence after a fragile flip passes only when it is explained
    (:func:`explain_case`) unless ``explain`` is False, when the first flip's margin alone decides
    (and the row says so)."""
    import torch

    rows = []
    prog = progress or Progress.quiet()
    with prog.task("level 2: whole model", total=len(cases), unit="cases") as task:
        for i, (x, t, lq) in enumerate(cases):
            with torch.no_grad(), capture_layers(model, "input") as cap:
                ref = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(lq)).numpy()
            out, inputs = backend.run_unet(x, t, lq)
            if saved is not None:
                saved.append({"x": x, "timesteps": t, "lq": lq, "reference": ref, "backend": out})
            cls = classify_flips({k: v["input"] for k, v in cap.items()}, inputs, backend.layer_names, ranks,
                                 th.fragile_margin)
            abs_err, max_rel, _ = rel_error(ref, out)
            first = cls["first_flip"]
            if first is None:
                verdict = "match" if _passes(abs_err, ref, rel_tol, th.atol) else "mismatch_without_flip"
            else:
                verdict = "diverged_after_fragile_flip" if first["fragile"] else "non_fragile_flip"
            row = {"case": i, "shape": list(x.shape), "timesteps": t.tolist(), "max_abs": abs_err, "max_rel": max_rel,
                   "first_flip": first, "flipped_layers": cls["flipped_layers"], "verdict": verdict,
                   "passed": verdict in ("match", "diverged_after_fragile_flip")}
            if verdict == "diverged_after_fragile_flip" and explain:
                # a divergence passes only when forcing the fragile flips reproduces the backend's output
                row["explanation"] = explain_case(
                    model, x, t, lq, out, inputs, fragile_margin=th.fragile_margin,
                    atol=th.atol + rel_tol * float(np.abs(out).max()), max_flips=th.explain_max_flips)
                if not row["explanation"]["explained"]:
                    row["verdict"], row["passed"] = "unexplained_divergence", False
            row["note"] = _level2_note(row, th)
            rows.append(row)
            task.advance(note=f"case {i}")
    return {"cases": rows, "passed": bool(rows) and all(r["passed"] for r in rows),
            "matched": sum(r["verdict"] == "match" for r in rows),
            "explained": sum(bool(r.get("explanation", {}).get("explained")) for r in rows)}


def expand_images(paths: Sequence[PathLike], option: str = "--images") -> List[Path]:
    """Image files, with folders expanded to their images (sorted). A missing path, or a folder
    without images, is an InputError naming it: nothing checked is a failure."""
    from ..pipeline.images import IMAGE_SUFFIXES

    out: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
            if not found:
                raise InputError(f"{option} {p}: no images in this folder ({', '.join(IMAGE_SUFFIXES)}); level 3 "
                                 "needs at least one")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{option} {p}: image or folder not found")
    return out


_expand_images = expand_images  # the former private name


def default_images_dir() -> Path:
    """``calib/images`` of this checkout: the default level-3 images."""
    return Path(__file__).resolve().parents[2] / "calib" / "images"


def default_images() -> List[Path]:
    root = default_images_dir()
    return sorted(root.glob("*.png")) if root.is_dir() else []


def _level3_note(row: Dict[str, Any], th: Thresholds) -> str:
    f, p = row["first_flip"], row["psnr_db"]
    if f is not None and not f["fragile"]:
        return f"first flip in {f['layer']} at margin {f['max_margin']:.1e} >= {th.fragile_margin:.0e}: not rounding noise"
    if th.min_psnr_db is not None and p < th.min_psnr_db:
        return f"PSNR {p:.2f} dB < --min-psnr {th.min_psnr_db:g}"
    if f is None:
        return "no sign flip" + (f"; PSNR >= --min-psnr {th.min_psnr_db:g}" if th.min_psnr_db is not None else "")
    why = (f"first flip in {f['layer']} at margin {f['max_margin']:.1e} < {th.fragile_margin:.0e} (float rounding); "
           "after it a binary net's output may move far (untrained fixture models do: ~15 dB)")
    if th.min_psnr_db is None:
        return f"passes: PSNR is reported, not enforced (no --min-psnr); {why}"
    return f"PSNR >= --min-psnr {th.min_psnr_db:g}; {why}"


def level3_pipeline(cfg: Any, model: Any, backend: ParityRunner, images: Sequence[Path], vq_ckpt: Optional[PathLike],
                    th: Thresholds, seed: int, *, progress: Optional[Progress] = None,
                    saved: Optional[Dict[str, Dict[str, np.ndarray]]] = None) -> Dict[str, Any]:
    import torch

    from ..models import load_autoencoder
    from ..pipeline.images import read_image
    from ..pipeline.onestep import OneStepSR

    if cfg.autoencoder is None:
        raise InputError(f"{cfg.source}: the config has no autoencoder section, so level 3 cannot run; "
                         "use --levels 1,2")
    vq = load_autoencoder(cfg.autoencoder, vq_ckpt, seed=seed)
    captured: Dict[str, np.ndarray] = {}

    def backend_unet(x: Any, t: Any, lq: Any) -> Any:
        out, inputs = backend.run_unet(x.numpy(), t.numpy(), lq.numpy())
        captured.clear()
        captured.update(inputs)
        return torch.from_numpy(out)

    # the VQ is the same torch model on both sides (only the UNet is under test); float32 because
    # float16 convolutions are very slow on CPU
    ref_pipe = OneStepSR(model, vq, cfg, vq_dtype=torch.float32)
    bk_pipe = OneStepSR(backend_unet, vq, cfg, vq_dtype=torch.float32)
    rows = []
    prog = progress or Progress.quiet()
    with prog.task("level 3: SR pipeline", total=len(images), unit="images") as task:
        for path in images:
            lr = read_image(path)
            with torch.no_grad(), capture_layers(model, "input") as cap:
                ref = ref_pipe.stages(lr, generator=torch.Generator().manual_seed(seed))
            z_shape = tuple(ref["noise"].shape)
            out = bk_pipe.stages(lr, noise=ref["noise"])
            if saved is not None:
                saved[path.name] = {"lr": lr.numpy(), "noise": ref["noise"].numpy(), "reference": ref["sr"].numpy(),
                                    "backend": out["sr"].numpy()}
            cls = classify_flips({k: v["input"] for k, v in cap.items()}, captured, backend.layer_names,
                                 {}, th.fragile_margin)
            p = psnr(ref["sr"].numpy(), out["sr"].numpy())
            worst = max(cls["per_layer"], key=lambda r: r["rate"])
            row = {"image": path.name, "latent": list(z_shape), "psnr_db": p,
                   "first_flip": cls["first_flip"], "flipped_layers": cls["flipped_layers"],
                   "max_flip_rate": worst["rate"], "max_flip_rate_layer": worst["name"] if worst["flips"] else None,
                   "flip_rates": {r["name"]: r["rate"] for r in cls["per_layer"] if r["flips"]},
                   "passed": bool((th.min_psnr_db is None or p >= th.min_psnr_db)
                                  and (cls["first_flip"] is None or cls["first_flip"]["fragile"]))}
            row["note"] = _level3_note(row, th)
            rows.append(row)
            task.advance(note=path.name)
    return {"images": rows, "passed": bool(rows) and all(r["passed"] for r in rows),
            "vq": "random init" if vq_ckpt is None else str(vq_ckpt)}


def _psnr_max(ref: Any, other: Any) -> Tuple[float, float]:
    a, b = np.asarray(ref, np.float64), np.asarray(other, np.float64)
    return psnr(a, b), float(np.abs(a - b).max())


def level3_autoencoder(cfg: Any, model: Any, vq_ref: Any, vq_low: Any, precision: str, images: Sequence[Path],
                       th: Thresholds, seed: int) -> Dict[str, Any]:
    """The low-precision autoencoder against the fp32 one, both around the reference UNet.

    Per image (SR images in [0, 1]):

    * ``psnr_db`` / ``max_abs``: the UNet held fixed: the low-precision decoder decodes the
      fp32 pipeline's UNet output. This is the autoencoder's own error in the SR image, and
      what ``--min-psnr`` gates;
    * ``latent_psnr_db`` / ``latent_max_abs``: the encoder's latent z_y against the fp32 one
      (PSNR over the fp32 latent's peak-to-peak range);
    * ``e2e_psnr_db`` / ``e2e_max_abs``: end to end, the UNet run again on the low-precision
      encoder's latent (same noise). A binary UNet amplifies any input change through sign
      flips of near-zero activations (random weights: ~15 dB whatever the precision), so this
      is reported, not gated;
    * ``index_change``: fraction of latent pixels whose codebook index differs between the
      two decoders end to end; ``encoder_index_change``: the same for the encoders' latents
      snapped directly (the encoder's error in codebook terms).
    """
    import torch

    from ..pipeline.images import read_image
    from ..pipeline.onestep import OneStepSR

    ref_pipe = OneStepSR(model, vq_ref, cfg)
    low_pipe = OneStepSR(model, vq_low, cfg)
    sf, scale = ref_pipe.sf, ref_pipe.scale_factor
    rows = []
    for path in images:
        lr = read_image(path)
        h, w = lr.shape[-2:]
        with torch.no_grad():
            ref = ref_pipe.stages(lr, generator=torch.Generator().manual_seed(seed))
            fixed = low_pipe.decode(ref["unet_out"])[:, :, : h * sf, : w * sf].clamp(-1.0, 1.0) * 0.5 + 0.5
            low = low_pipe.stages(lr, noise=ref["noise"])
            _, idx_ref = vq_ref.snap(ref["unet_out"] / scale)
            _, idx_low = vq_ref.snap(low["unet_out"] / scale)
            _, enc_ref = vq_ref.snap(ref["z_y"] / scale)
            _, enc_low = vq_ref.snap(low["z_y"] / scale)
        p, mx = _psnr_max(ref["sr"].numpy(), fixed.numpy())
        z_ref, z_low = ref["z_y"].numpy().astype(np.float64), low["z_y"].numpy().astype(np.float64)
        z_range = max(float(z_ref.max() - z_ref.min()), 1e-12)
        e2e_p, e2e_mx = _psnr_max(ref["sr"].numpy(), low["sr"].numpy())
        rows.append({
            "image": path.name, "psnr_db": p, "max_abs": mx,
            "latent_psnr_db": psnr(z_ref, z_low, peak=z_range), "latent_max_abs": float(np.abs(z_ref - z_low).max()),
            "e2e_psnr_db": e2e_p, "e2e_max_abs": e2e_mx,
            "index_change": float((idx_ref != idx_low).float().mean()),
            "encoder_index_change": float((enc_ref != enc_low).float().mean()),
            "passed": bool(th.min_psnr_db is None or p >= th.min_psnr_db),
        })
    return {"precision": precision, "autoencoder": repr(vq_low), "images": rows, "passed": all(r["passed"] for r in rows),
            "min_psnr_db": min((r["psnr_db"] for r in rows), default=None)}


# --------------------------------------------------------------------------- entry point


def parse_levels(levels: Union[str, Sequence[int]]) -> List[int]:
    """``"1,2,3"`` or a sequence -> sorted unique levels; anything else is an InputError naming --levels."""
    try:
        values = [int(v) for v in levels.split(",") if v.strip()] if isinstance(levels, str) else [int(v) for v in levels]
    except (TypeError, ValueError):
        raise InputError(f"--levels {levels!r}: expected comma-separated levels from 1, 2, 3 (for example 1,2)") from None
    bad = [v for v in values if v not in LEVELS]
    if bad or not values:
        what = f"{', '.join(map(str, bad))} {'is not a level' if len(bad) == 1 else 'are not levels'}" if bad \
            else "no level given"
        raise InputError(f"--levels {levels if isinstance(levels, str) else ','.join(map(str, levels))}: {what}; "
                         "choose from 1 (layers), 2 (whole model), 3 (SR pipeline on images)")
    return sorted(set(values))


def _save_npz(folder: Path, name: str, arrays: Dict[str, np.ndarray]) -> None:
    from ..reports import atomic_output

    with atomic_output(folder / name) as f:
        np.savez_compressed(f, **arrays)


def check(
    config: Union[PathLike, Any],
    ckpt: Optional[PathLike],
    artifacts: Optional[PathLike] = None,
    backend: str = "onnxruntime",
    images: Optional[Sequence[PathLike]] = None,
    *,
    vq_ckpt: Optional[PathLike] = None,
    seed: int = 0,
    thresholds: Optional[Thresholds] = None,
    levels: Union[str, Sequence[int]] = (1, 2, 3),
    device: str = "cpu",
    sizes: Optional[Sequence[Tuple[int, int, int]]] = None,
    layers: Optional[Sequence[str]] = None,
    isa: Optional[str] = None,
    plugin_lib: Optional[PathLike] = None,
    explain: bool = True,
    progress: Optional[Progress] = None,
    save_inputs: Optional[PathLike] = None,
    save_outputs: Optional[PathLike] = None,
    vq_precision: Optional[str] = None,
    calib: Optional[PathLike] = None,
    say: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Run the three parity levels of ``backend`` against the reference.

    ``config``: a config path, built-in name or ModelConfig. ``ckpt`` None means the same seeded random init the exporter used (``seed``).
    ``artifacts``: the export under test (onnxruntime, tensorrt); its metadata must fit
    ``config``, ``ckpt`` / ``seed`` and this op contract, or an ArtifactError names both sides.
    ``images``: LR images or folders of them for level 3 (default: ``calib/images/*.png``);
    an empty folder, or no images at all, is an InputError (nothing checked is a failure).
    ``sizes``: level-2 input shapes (N, H, W); default two cases at the model's size
    multiple. ``layers``: restrict level 1 to these binary layers (default: all). ``isa``:
    the CPU instruction set of the packed torch backend. ``save_inputs`` / ``save_outputs``:
    folders that receive level{1,2,3}.npz with the inputs fed and the reference and backend
    outputs, to reproduce a failure. ``vq_precision``: the autoencoder's precision on this backend
    (None: the device default); anything but fp32 adds the autoencoder part of level 3
    (:func:`level3_autoencoder`), with INT8 graphs calibrated on ``calib``. Returns a
    JSON-serialisable report; ``report["passed"]`` is the verdict.
    """
    from ..models import load_unet
    from ..models.checkpoint import check_checkpoint_file

    from ..models.precision import resolve_precision

    th = thresholds or Thresholds()
    lv = parse_levels(levels)
    prog = progress or Progress.quiet()
    # everything that can be refused is refused before models are loaded
    unused = [opt for opt, given, level in (("--vq-ckpt", vq_ckpt is not None, 3), ("--images", bool(images), 3),
                                            ("--min-psnr", th.min_psnr_db is not None, 3), ("--layer", bool(layers), 1),
                                            ("--vq-precision", vq_precision is not None, 3), ("--calib", calib is not None, 3))
              if given and level not in lv]
    if unused:
        raise InputError(f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used by --levels "
                         f"{','.join(map(str, lv))} (only level {3 if unused[0] != '--layer' else 1} reads it); "
                         "drop it or add the level")
    imgs: List[Path] = []
    if 3 in lv:
        if images:
            imgs = expand_images(images)
        else:
            imgs = default_images()
            if not imgs:
                raise InputError(f"level 3 needs LR images and {default_images_dir()} holds none; give --images "
                                 "FOLDER, or --levels 1,2")
    cfg = resolve_config(config)
    if 3 in lv and cfg.autoencoder is None:
        raise InputError(f"{cfg.source}: the config has no autoencoder section, so level 3 cannot run; "
                         "use --levels 1,2")
    for path in (ckpt, vq_ckpt if 3 in lv else None):
        if path is not None:
            check_checkpoint_file(path)  # a bad file is named now, not after minutes of work
    cls = get_backend(backend)
    spec = BackendSpec(backend, cfg, ckpt=ckpt if "ckpt" in cls.uses else None, seed=seed, artifacts=artifacts,
                       device=device, isa=isa, plugin_lib=plugin_lib)
    precision = resolve_precision(vq_precision, device)
    backend_obj = make_backend(spec)
    if 3 in lv and precision != "fp32":
        backend_obj.check_vq_precision(precision)  # refuse before the long levels run
    bk = backend_obj.parity_runner()
    if bk.metadata is not None:
        from ..export import provenance

        where = bk.source or str(artifacts)
        provenance.check_contract(bk.metadata, where)
        provenance.check_config(bk.metadata, where, cfg)
        provenance.check_weights(bk.metadata, where, ckpt, seed)
    model = load_unet(cfg, ckpt, seed=seed)
    fp16 = bk.float_dtype == np.float16
    if fp16:
        th = replace(th, fragile_margin=th.fragile_margin_fp16)
    layer_tol = th.rtol if th.rtol is not None else (th.layer_rel_fp16 if fp16 else th.layer_rel)
    model_tol = th.rtol if th.rtol is not None else (th.layer_rel_fp16 if fp16 else th.model_rel)
    m = cfg.unet.size_multiple
    c_lat, c_lq = cfg.unet.out_channels, cfg.unet.in_channels - cfg.unet.out_channels
    t = cfg.diffusion.one_step().timestep if cfg.diffusion is not None else 0
    report: Dict[str, Any] = {"backend": backend, "runs_on": bk.description, "artifacts": str(artifacts) if artifacts else None,
                              "float_dtype": str(bk.float_dtype), "thresholds": asdict(th), "levels": lv}
    if isa is not None:
        report["isa"] = isa
    keep_in = Path(save_inputs) if save_inputs is not None else None
    keep_out = Path(save_outputs) if save_outputs is not None else None
    keep = keep_in is not None or keep_out is not None

    def save(level: str, inputs: Dict[str, np.ndarray], outputs: Dict[str, np.ndarray]) -> None:
        if keep_in is not None:
            _save_npz(keep_in, f"{level}.npz", inputs)
        if keep_out is not None:
            _save_npz(keep_out, f"{level}.npz", outputs)

    if 1 in lv:
        import torch

        x, tt, lq = fixture_like_inputs(1, 2 * m, 2 * m, c_lat, c_lq, t, seed + 1)
        with torch.no_grad(), capture_layers(model) as cap:
            model(torch.from_numpy(x), torch.from_numpy(tt), torch.from_numpy(lq))
        kept1: Optional[Dict[str, Dict[str, np.ndarray]]] = {} if keep else None
        report["level1"] = level1_layers(cap, bk, bk.layer_ranks, layer_tol, layers, atol=th.atol, progress=prog,
                                         saved=kept1)
        if kept1 is not None:
            save("level1", {"x": x, "timesteps": tt, "lq": lq, **{f"{k}.input": v["input"] for k, v in kept1.items()}},
                 {f"{k}.{side}": v[side] for k, v in kept1.items() for side in ("reference", "backend")})
    if 2 in lv:
        shapes = list(sizes) if sizes else [(1, m, m), (1, m, 2 * m)]
        cases = [fixture_like_inputs(n, h, w, c_lat, c_lq, t, seed + 10 + i) for i, (n, h, w) in enumerate(shapes)]
        kept2: Optional[List[Dict[str, np.ndarray]]] = [] if keep else None
        report["level2"] = level2_model(model, bk, cases, bk.layer_ranks, th, model_tol, explain=explain,
                                        progress=prog, saved=kept2)
        if kept2 is not None:
            save("level2", {f"case{i}.{k}": c[k] for i, c in enumerate(kept2) for k in ("x", "timesteps", "lq")},
                 {f"case{i}.{k}": c[k] for i, c in enumerate(kept2) for k in ("reference", "backend")})
    if 3 in lv:
        kept3: Optional[Dict[str, Dict[str, np.ndarray]]] = {} if keep else None
        report["level3"] = level3_pipeline(cfg, model, bk, imgs, vq_ckpt, th, seed, progress=prog, saved=kept3)
        if kept3 is not None:
            save("level3", {f"{k}.{s}": v[s] for k, v in kept3.items() for s in ("lr", "noise")},
                 {f"{k}.{s}": v[s] for k, v in kept3.items() for s in ("reference", "backend")})
        if precision != "fp32":
            from ..models.autoencoder import load_autoencoder
            from ..models.precision import TorchVQ
            from ..pipeline.factory import make_autoencoder

            vq_ref = TorchVQ(load_autoencoder(cfg.autoencoder, vq_ckpt, seed=seed), "fp32")
            vq_low = make_autoencoder(spec, vq_ckpt, precision, calib=calib, say=say, backend=backend_obj)
            report["level3"]["autoencoder"] = level3_autoencoder(cfg, model, vq_ref, vq_low, precision, imgs, th, seed)
            report["level3"]["passed"] = report["level3"]["passed"] and report["level3"]["autoencoder"]["passed"]
    report["vq_precision"] = precision
    if hasattr(bk, "close"):
        bk.close()
    report["passed"] = all(report[k]["passed"] for k in ("level1", "level2", "level3") if k in report)
    return report


def check_isas(config: PathLike, ckpt: Optional[PathLike], *, isas: Optional[Sequence[str]] = None,
               progress: Optional[Progress] = None, **kwargs: Any) -> Dict[str, Any]:
    """:func:`check` of the packed torch backend on every CPU instruction set this machine runs
    (``isas`` None: all of them, slowest first). Passes when every run passes."""
    from ..plugins import torch_ops

    names = list(isas) if isas else list(torch_ops.cpu_available_isas())
    if not names:
        from ..errors import BackendUnavailable

        raise BackendUnavailable(f"--isa all: the native CPU kernels are not loaded ({torch_ops.unavailable_reason()})")
    runs = {}
    prog = progress or Progress.quiet()
    for name in names:
        prog.say(f"ISA {name}")
        runs[name] = check(config, ckpt, backend="torch", isa=name, progress=prog, **kwargs)
    return {"backend": "torch", "isas": names, "runs": runs, "passed": all(r["passed"] for r in runs.values())}


_VERDICT_LABELS = {"match": "match", "diverged_after_fragile_flip": "fragile flip", "non_fragile_flip": "FLIP: bug",
                   "unexplained_divergence": "unexplained", "mismatch_without_flip": "mismatch"}


def render_check_report(report: Dict[str, Any], console: Any = None) -> None:
    """Print the three levels as rich tables (each ISA run in turn for :func:`check_isas` reports)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    ok = lambda b: "[green]pass[/]" if b else "[red]FAIL[/]"  # noqa: E731
    if "runs" in report:
        for name, run in report["runs"].items():
            console.rule(f"ISA {name}")
            render_check_report(run, console)
        console.print(f"all ISAs ({', '.join(report['isas'])}): {ok(report['passed'])}")
        return
    if report.get("runs_on"):
        console.print(f"checking {report['runs_on']}")
    if "level1" in report:
        l1 = report["level1"]
        tol = f"tol {l1['tolerance']:.0e}" + (f" + atol {l1['atol']:.0e}" if l1.get("atol") else "")
        t = Table(title=f"level 1: teacher-forced layers ({tol}) {ok(l1['passed'])}")
        for c in ("layer", "max rel", "mean rel", "sign dis.", "above tol", ""):
            t.add_column(c)
        rows = sorted(l1["layers"], key=lambda r: (r["passed"], -r["max_rel"]))[:10]
        for r in rows:
            t.add_row(r["name"], f"{r['max_rel']:.2e}", f"{r['mean_rel']:.2e}", str(r["sign_disagreements"]),
                      str(r["disagreements_above_tol"]), ok(r["passed"]))
        console.print(t)
        console.print(f"{len(l1['layers'])} layers, worst {l1['worst']} ({l1['worst_max_rel']:.2e})")
    if "level2" in report:
        t = Table(title=f"level 2: whole model {ok(report['level2']['passed'])}")
        for c in ("case", "shape", "max rel", "first flip", "margin", "verdict", "why"):
            t.add_column(c, overflow="fold")
        for r in report["level2"]["cases"]:
            f = r["first_flip"]
            t.add_row(str(r["case"]), "x".join(map(str, r["shape"])), f"{r['max_rel']:.2e}",
                      f"{f['layer']} ({f['count']})" if f else "-", f"{f['max_margin']:.1e}" if f else "-",
                      _VERDICT_LABELS.get(r["verdict"], r["verdict"]), r.get("note", ""))
        console.print(t)
    if "level3" in report:
        l3 = report["level3"]
        t = Table(title=f"level 3: SR pipeline on images {ok(l3['passed'])}")
        for c in ("image", "PSNR dB", "flipped layers", "max flip rate", "first flip", "", "why"):
            t.add_column(c, overflow="fold")
        for r in l3["images"]:
            f = r["first_flip"]
            t.add_row(r["image"], f"{r['psnr_db']:.2f}", str(r["flipped_layers"]), f"{r['max_flip_rate']:.2e}",
                      f"{f['layer']} (margin {f['max_margin']:.1e})" if f else "-", ok(r["passed"]), r.get("note", ""))
        console.print(t)
        vq = l3.get("autoencoder")
        if vq:
            t = Table(title=f"level 3: {vq['precision']} autoencoder vs fp32 (SR images) {ok(vq['passed'])}")
            for c in ("image", "PSNR dB (UNet fixed)", "max err", "latent PSNR dB", "e2e PSNR dB", "index change",
                      "enc. index change", ""):
                t.add_column(c)
            for r in vq["images"]:
                t.add_row(r["image"], f"{r['psnr_db']:.2f}", f"{r['max_abs']:.3f}", f"{r['latent_psnr_db']:.2f}",
                          f"{r['e2e_psnr_db']:.2f}", f"{r['index_change']:.3f}", f"{r['encoder_index_change']:.3f}",
                          ok(r["passed"]))
            console.print(t)
    console.print(f"overall: {ok(report['passed'])}")
