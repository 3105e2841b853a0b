"""Looking inside a forward: capture what each binary layer binarizes, and sign margins.

Parity of a binary network is judged by signs (DESIGN.md, "Parity"): these helpers
record every binary layer's input during a forward, compute the margin |x| / s of
each element (s = the scale it is binarized with) and compare sign patterns.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .binary_layers import BinaryConv2d
from .unet import iter_binary_layers


@contextlib.contextmanager
def capture_binary_inputs(
    model: nn.Module,
    first_call_only: bool = True,
    layers: Optional[Iterable[Tuple[str, nn.Module]]] = None,
) -> Iterator[Dict[str, torch.Tensor]]:
    """Record the input of every binary layer during the forwards run inside the block.

    Yields a dict {layer name: input tensor (detached clone)} filled in execution order.
    ``layers`` (name, module) pairs replace the default, the model's reference binary
    layers (e.g. the packed layers of :func:`bimaco_deploy.backends.packed_torch.pack_unet`).
    """
    captured: Dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str) -> Callable:
        def hook(_module: nn.Module, args: Tuple[torch.Tensor, ...]) -> None:
            if first_call_only and name in captured:
                return
            captured[name] = args[0].detach().clone()

        return hook

    for name, layer in iter_binary_layers(model) if layers is None else layers:
        handles.append(layer.register_forward_pre_hook(make_hook(name)))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


#: One forced element: (flat index, target sign -1/0/+1, reference margin used when x is 0).
Override = Tuple[int, int, float]


@contextlib.contextmanager
def force_signs(model: nn.Module, overrides: Dict[str, List[Override]]) -> Iterator[None]:
    """Give chosen elements of chosen binary layers' inputs another sign, on the layer's first call.

    Used to show that a divergence from a reference is explained by near-zero
    activations taking another sign. A nonzero element keeps its magnitude (so the
    scale s is unchanged) and the float side branches move by only 2|x|, tiny by
    definition; an exact zero becomes +-(margin * s); a target of 0 zeroes the element.
    """
    done: set = set()
    handles = []
    layers = dict(iter_binary_layers(model))

    def make_hook(name: str, items: List[Override]) -> Callable:
        channel_dim = 1 if isinstance(layers[name], BinaryConv2d) else -1

        def hook(_module: nn.Module, args: Tuple[torch.Tensor, ...]):
            if name in done:
                return None
            done.add(name)
            x = args[0].clone()
            s = x.abs().mean(dim=channel_dim, keepdim=True).expand_as(x).reshape(-1)
            flat = x.view(-1)
            for idx, target, margin in items:
                v = flat[idx]
                magnitude = v.abs() if v != 0 else margin * s[idx]
                flat[idx] = target * magnitude
            return (x,) + tuple(args[1:])

        return hook

    for name, items in overrides.items():
        handles.append(layers[name].register_forward_pre_hook(make_hook(name, list(items))))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def sign_margins(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """|x| / s for every element, with s the scale the layer binarizes that element with."""
    channel_dim = 1 if isinstance(layer, BinaryConv2d) else -1
    s = x.abs().mean(dim=channel_dim, keepdim=True)
    return x.abs() / torch.where(s > 0, s, torch.ones_like(s))


@dataclass
class DivergenceExplanation:
    """Result of :func:`explain_divergence`: the flips that make our forward follow the reference's."""

    flips: List[Tuple[str, int, float, int]]  # (layer, flat index, reference margin, sign we gave it)
    max_abs_error: float
    explained: bool
    first_divergence: Optional[Tuple[str, float]]


def explain_divergence(
    run: Callable[[Dict[str, List[Override]]], Tuple[torch.Tensor, Dict[str, torch.Tensor]]],
    layers: Dict[str, nn.Module],
    order: List[str],
    fragile: Dict[str, Tuple[np.ndarray, np.ndarray]],
    reference_out: np.ndarray,
    *,
    atol: float = 1e-5,
    margin_tol: float = 1e-5,
    flip_margin: float = 1e-6,
    max_flips: int = 8,
) -> DivergenceExplanation:
    """Find the near-zero activations whose sign differs between us and a reference.

    The reference is known only through its output and, per layer, the positions and
    margins of its fragile elements (``fragile[layer] = (flat indices, margins)``, as in
    the fixtures' signs.npz). Our margins at those positions track the reference's
    until the first sign disagreement; the first layer where they stop tracking
    bounds where it happened. Greedily give one candidate (reference margin below
    ``flip_margin``) the other sign, keep the change that pushes the divergence
    furthest, repeat. ``run(overrides)`` runs our forward under :func:`force_signs` and
    returns (output, captured binary-layer inputs). A divergence explained this way
    is float-rounding noise, not a bug.
    """

    def track(overrides: Dict[str, List[Override]]):
        out, cap = run(overrides)
        first = None
        for pos, name in enumerate(order):
            if name not in fragile:
                continue
            idx, ref_m = fragile[name]
            ours = sign_margins(layers[name], cap[name]).reshape(-1).numpy()[idx]
            dev = np.abs(ours - ref_m)
            if dev.max() > margin_tol:
                first = (pos, name, float(dev.max()))
                break
        return float(np.abs(out.numpy() - reference_out).max()), first, cap

    chosen: List[Tuple[str, int, float, int]] = []
    overrides: Dict[str, List[Override]] = {}
    err, first, cap = track(overrides)
    while err > atol and first is not None and len(chosen) < max_flips:
        bound = first[0]
        taken = {(c[0], c[1]) for c in chosen}
        trials = []
        for pos, name in enumerate(order[: bound + 1]):
            if name not in fragile:
                continue
            x = cap[name].reshape(-1)
            for i, m in zip(*fragile[name]):
                i, m = int(i), float(m)
                if m >= flip_margin or (name, i) in taken:
                    continue
                ours = float(x[i])
                if ours != 0 and m > 0:
                    targets = [-int(np.sign(ours))]
                elif ours != 0:
                    targets = [0]  # the reference binarized an exact zero here
                elif m > 0:
                    targets = [-1, 1]  # we have an exact zero, the reference a tiny value
                else:
                    continue
                trials += [(pos, name, i, m, t) for t in targets]
        best = None
        for pos, name, i, m, target in sorted(trials, key=lambda c: -c[0]):
            trial = {k: list(v) for k, v in overrides.items()}
            trial.setdefault(name, []).append((i, target, m))
            t_err, t_first, t_cap = track(trial)
            t_pos = len(order) if t_first is None else t_first[0]
            if best is None or t_pos > best[0] or (t_pos == best[0] and t_err < best[1]):
                best = (t_pos, t_err, t_first, t_cap, name, i, m, target, trial)
            if t_err <= atol:
                break
        if best is None or best[0] <= bound:
            break
        _, err, first, cap, name, i, m, target, overrides = best
        chosen.append((name, i, m, target))
    return DivergenceExplanation(
        flips=chosen,
        max_abs_error=err,
        explained=err <= atol,
        first_divergence=None if first is None else (first[1], first[2]),
    )


def explain_output_divergence(
    run: Callable[[Dict[str, List[Override]]], Tuple[torch.Tensor, Dict[str, torch.Tensor]]],
    layers: Dict[str, nn.Module],
    order: List[str],
    reference_out: np.ndarray,
    *,
    atol: float = 1e-5,
    flip_margin: float = 1e-6,
    max_flips: int = 4,
    max_candidates: int = 6,
) -> DivergenceExplanation:
    """:func:`explain_divergence` for a reference known only through its output.

    With no record of where the reference binarized, the candidates are our own nonzero
    elements whose margin is below ``flip_margin``, the ``max_candidates`` smallest first
    (rounding flips elements within a few ulps of zero; margins that small are rare).
    Greedily give the one that lowers the output error most the other sign, and repeat
    while the error drops. Exact zeros are not candidates: GELU underflow makes them
    exactly zero under any summation order.
    """
    chosen: List[Tuple[str, int, float, int]] = []
    overrides: Dict[str, List[Override]] = {}
    out, cap = run(overrides)
    err = float(np.abs(out.numpy() - reference_out).max())
    while err > atol and len(chosen) < max_flips:
        taken = {(c[0], c[1]) for c in chosen}
        candidates = []
        for name in order:
            flat = cap[name].reshape(-1).numpy()
            m = sign_margins(layers[name], cap[name]).reshape(-1).numpy()
            for i in np.flatnonzero((m < flip_margin) & (flat != 0)).tolist():
                if (name, i) not in taken:
                    candidates.append((float(m[i]), name, i, -int(np.sign(flat[i]))))
        best = None
        for m, name, i, target in sorted(candidates)[:max_candidates]:
            trial = {k: list(v) for k, v in overrides.items()}
            trial.setdefault(name, []).append((i, target, m))
            t_out, t_cap = run(trial)
            t_err = float(np.abs(t_out.numpy() - reference_out).max())
            if best is None or t_err < best[0]:
                best = (t_err, t_cap, trial, (name, i, m, target))
            if t_err <= atol:
                break
        if best is None or best[0] >= err:
            break
        err, cap, overrides, flip = best
        chosen.append(flip)
    return DivergenceExplanation(flips=chosen, max_abs_error=err, explained=err <= atol, first_divergence=None)


@dataclass
class BackendExplanation:
    """Result of :func:`explain_backend_divergence`.

    ``flips``: (layer, flat index, our margin there, the backend's sign), the elements the
    reference was forced to; ``blocking``: the first disagreement that is NOT fragile (a bug:
    (layer, flat index, our margin)); ``max_abs_error``: forced reference vs backend output.
    """

    flips: List[Tuple[str, int, float, int]]
    blocking: Optional[Tuple[str, int, float]]
    max_abs_error: float
    explained: bool

    def summary(self) -> str:
        """One line: 'match', 'explained: N flips, margin <= M', or why not."""
        if self.blocking is not None:
            name, idx, m = self.blocking
            return f"non-fragile sign disagreement in {name} at {idx} (margin {m:.1e}): a bug, not rounding"
        if not self.explained:
            return f"not explained: {len(self.flips)} fragile flips leave a max abs error of {self.max_abs_error:.2e}"
        if not self.flips:
            return f"match (max abs error {self.max_abs_error:.1e})"
        n = len(self.flips)
        return f"explained: {n} flip{'' if n == 1 else 's'}, margin <= {max(f[2] for f in self.flips):.1e}"


def explain_backend_divergence(
    model: nn.Module,
    inputs: Tuple[torch.Tensor, ...],
    backend_out: np.ndarray,
    backend_inputs: Dict[str, np.ndarray],
    *,
    fragile_margin: float,
    atol: float,
    max_flips: int = 16,
) -> BackendExplanation:
    """Does a backend compute what the reference computes, up to rounding-level sign choices?

    The backend's binary-layer inputs are known (``backend_inputs``, per layer name). Run the
    reference; at the first layer whose binarized input (sign, or exact zero) disagrees with
    the backend's, every disagreeing element must be fragile (our margin below
    ``fragile_margin``): force the reference to the backend's sign there and run again, layer
    after layer, until the sign patterns agree everywhere. Then the forced reference output
    must equal ``backend_out`` within ``atol``. A non-fragile disagreement, more than
    ``max_flips`` flips, or an output that still differs is not rounding. Deterministic:
    no search, because the backend says which sign it took.
    """
    layers = dict(iter_binary_layers(model))
    overrides: Dict[str, List[Override]] = {}
    flips: List[Tuple[str, int, float, int]] = []
    while True:
        # forcing first: the capture hook then records what the layer really binarizes
        with torch.no_grad(), force_signs(model, overrides), capture_binary_inputs(model) as cap:
            out = model(*inputs).detach().numpy()
        err = float(np.abs(out - backend_out).max()) if out.shape == np.shape(backend_out) else float("inf")
        for name, layer in layers.items():
            ours = cap[name].reshape(-1).numpy()
            theirs = np.asarray(backend_inputs[name], dtype=np.float32).reshape(-1)
            if ours.shape != theirs.shape:
                raise ValueError(f"layer '{name}': backend input has {theirs.size} elements, the reference {ours.size}")
            diff = np.flatnonzero(np.sign(ours) != np.sign(theirs))
            if diff.size:
                break
        else:
            return BackendExplanation(flips, None, err, err <= atol)
        ours_m = sign_margins(layer, cap[name]).reshape(-1).numpy()
        bad = diff[ours_m[diff] >= fragile_margin]
        if bad.size:
            return BackendExplanation(flips, (name, int(bad[0]), float(ours_m[bad[0]])), err, False)
        if len(flips) + diff.size > max_flips:
            return BackendExplanation(flips, None, err, False)
        # where we hold an exact zero, give it the backend's own margin (its scale is ours to rounding)
        theirs_m = sign_margins(layer, torch.from_numpy(theirs.reshape(cap[name].shape))).reshape(-1).numpy()
        for i in diff.tolist():
            target = int(np.sign(theirs[i]))
            overrides.setdefault(name, []).append((i, target, float(theirs_m[i])))
            flips.append((name, i, float(ours_m[i]), target))
