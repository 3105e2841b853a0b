"""The backend registry: every backend module registers itself; names resolve without a list."""

from __future__ import annotations

import pytest
import torch

from bimaco_deploy.backends import base
from bimaco_deploy.backends.base import Backend, BackendSpec, backend_names, get_backend, make_backend, register
from bimaco_deploy.errors import BackendUnavailable, BimacoError
from bimaco_deploy.models import load_config


def test_the_shipped_backends_register_themselves():
    assert {"torch-ref", "torch", "onnxruntime", "tensorrt"} <= set(backend_names())
    for name in backend_names():
        cls = get_backend(name)
        assert cls.name == name and cls.description and issubclass(cls, Backend)


def test_an_unknown_name_lists_the_choices():
    with pytest.raises(BimacoError, match=r"unknown backend 'bogus'; choose one of onnxruntime, tensorrt, torch, torch-ref"):
        get_backend("bogus")


def test_a_new_backend_is_one_class_and_one_decorator(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @register
    class Doubling(Backend):
        name = "doubling"
        description = "returns 2 x (test only)"

        def unet(self):
            return lambda x, t, lq: 2 * x

        def float_baseline(self):
            return self.unet(), "the same"

    spec = BackendSpec("doubling", load_config("bimacosr-tiny"))
    backend = make_backend(spec)
    assert isinstance(backend, Doubling) and "doubling" in backend_names()
    x = torch.ones(1, 3, 4, 4)
    assert torch.equal(backend.unet()(x, None, None), 2 * x)
    with pytest.raises(BackendUnavailable, match="does not support backend 'doubling'"):
        backend.parity_runner()


def test_two_backends_cannot_share_a_name(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    class Impostor(Backend):
        name = "torch"
        description = "clash"

        def unet(self):  # pragma: no cover - never built
            raise AssertionError

        def float_baseline(self):  # pragma: no cover
            raise AssertionError

    with pytest.raises(RuntimeError, match="registered twice"):
        register(Impostor)


def test_torch_backends_give_a_unet_and_the_float_twin_baseline():
    cfg = load_config("bimacosr-tiny")
    m = cfg.unet.size_multiple
    x, t, lq = torch.randn(1, 3, m, m), torch.tensor([14]), torch.randn(1, 3, m, m)
    for name in ("torch-ref", "torch"):
        backend = make_backend(BackendSpec(name, cfg, seed=0))
        out = backend.unet()(x, t, lq)
        base_unet, line = backend.float_baseline()
        assert out.shape == x.shape and base_unet(x, t, lq).shape == x.shape and "float twin" in line
