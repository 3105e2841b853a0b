"""The autoencoder's precision word: parsing, device defaults, refusals and warnings, TorchVQ."""

from __future__ import annotations

import warnings

import pytest
import torch

from bimaco_deploy.errors import BackendUnavailable, ConfigError
from bimaco_deploy.models import precision as P
from bimaco_deploy.models.autoencoder import build_autoencoder
from bimaco_deploy.models.config import load_config


def test_precision_words_are_checked_and_none_means_the_device_default():
    assert P.parse_precision(None) is None
    assert P.parse_precision(" INT8 ") == "int8"
    with pytest.raises(ConfigError, match=r"--vq-precision must be one of fp32, fp16, bf16, int8, got 'fp8'"):
        P.parse_precision("fp8")
    assert P.resolve_precision(None, "cpu") == "fp32"
    assert P.resolve_precision(None, "cuda") == "fp16"
    assert P.resolve_precision("bf16", "cpu") == "bf16"
    assert P.default_precision("auto") == ("fp16" if torch.cuda.is_available() else "fp32")


@pytest.mark.parametrize("flags, native", [({"avx2", "fma"}, False), ({"avx512f", "avx512_bf16"}, True),
                                           ({"amx_bf16"}, True), ({"asimd", "bf16"}, True)])
def test_bf16_is_native_only_with_a_bfloat16_flag(monkeypatch, flags, native):
    monkeypatch.setattr(P, "_cpu_flags", lambda: ("Some CPU", set(flags)))
    ok, why = P.cpu_bf16_native()
    assert ok is native and why.startswith("Some CPU: ")


def test_bf16_on_a_cpu_without_it_is_refused_naming_the_cpu_and_the_alternatives(monkeypatch):
    monkeypatch.setattr(P, "_cpu_flags", lambda: ("Old CPU", {"avx2"}))
    with pytest.raises(BackendUnavailable, match=r"bf16 needs a CPU that computes bfloat16 natively.*Old CPU.*"
                                                 r"--vq-precision fp32 \(the CPU default\) or int8"):
        P.check_torch_precision("bf16", "cpu")


def test_int8_is_not_a_torch_precision_and_fp16_on_cpu_warns():
    with pytest.raises(ConfigError, match="int8 runs as calibrated ONNX Runtime graphs"):
        P.check_torch_precision("int8", "cpu")
    with pytest.warns(P.SlowPrecisionWarning, match="fp16 on a CPU"):
        P.check_torch_precision("fp16", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.check_torch_precision("fp32", "cpu")  # the CPU default: silent


@pytest.fixture(scope="module")
def tiny_vq():
    return build_autoencoder(load_config("bimacosr-tiny").autoencoder, seed=3)


def test_torch_vq_takes_and_gives_float32_at_every_precision(tiny_vq):
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    ref = P.TorchVQ(tiny_vq, "fp32")
    z = ref.encode(x)
    assert z.dtype == torch.float32 and ref.decode(z).dtype == torch.float32
    if P.cpu_bf16_native()[0]:
        low = P.TorchVQ(tiny_vq, "bf16")
        zb = low.encode(x)
        assert zb.dtype == torch.float32
        # bf16 keeps 8 mantissa bits: the latent is close, not equal
        err = float((zb - z).abs().max() / z.abs().max())
        assert 0 < err < 0.05


def test_torch_vq_snaps_to_the_codebook_in_float32_under_bf16(tiny_vq):
    if not P.cpu_bf16_native()[0]:
        pytest.skip(f"this CPU has no native bfloat16 ({P.cpu_bf16_native()[1]})")
    z = torch.randn(1, 3, 16, 16)
    _, idx32 = P.TorchVQ(tiny_vq, "fp32").snap(z)
    _, idx16 = P.TorchVQ(tiny_vq, "bf16").snap(z)
    assert torch.equal(idx32, idx16)  # the search is not done in bfloat16
