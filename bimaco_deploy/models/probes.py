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
    layers (e.g. the packed layers of :func:`bimaco_deploy.runtime.packed_torch.pack_unet`).
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
