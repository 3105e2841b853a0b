"""The VQ graphs (export/vq.py): the chunked attention form against the plain formula and torch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from bimaco_deploy.backends.onnxruntime import make_session
from bimaco_deploy.export.layer_params import state_to_numpy
from bimaco_deploy.export.vq import build_vq_graphs
from bimaco_deploy.models.autoencoder import load_autoencoder


@pytest.fixture(scope="module")
def vq():
    model = load_autoencoder("bimacosr-tiny", None, seed=3)
    # random init leaves the attention close to uniform; larger q/k weights give peaked softmax rows
    with torch.no_grad():
        for blk in (model.encoder.mid.attn_1, model.decoder.mid.attn_1):
            blk.q.weight.mul_(8.0)
            blk.k.weight.mul_(8.0)
    return model


@pytest.mark.parametrize("rows", [7, 16, 140])
def test_chunked_attention_graphs_match_the_plain_graphs_and_torch(vq, rows):
    """A 40x56 image has a 10x14 latent: 140 positions in chunks of `rows` (uneven tails for 16)."""
    state = state_to_numpy(vq.state_dict())
    chunked = build_vq_graphs(vq.config, state, score_bytes=rows * 140 * 4)
    plain = build_vq_graphs(vq.config, state, attention="plain")
    for m in chunked:
        onnx.checker.check_model(m, full_check=True)
        assert "Loop" in {n.op_type for n in m.graph.node}
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 40, 56)).astype(np.float32)
    z_c = make_session(chunked[0], device="cpu").run(None, {"image": x})[0]
    z_p = make_session(plain[0], device="cpu").run(None, {"image": x})[0]
    with torch.no_grad():
        z_t = vq.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(z_c, z_p, rtol=0, atol=2e-5)
    np.testing.assert_allclose(z_c, z_t, rtol=0, atol=2e-5)
    # the decoder snaps to the codebook first: feed it codebook vectors so that no index can flip
    with torch.no_grad():
        zq, _ = vq.quantize(torch.from_numpy(z_t))
    zq = zq.numpy()
    y_c = make_session(chunked[1], device="cpu").run(None, {"latent": zq})[0]
    y_p = make_session(plain[1], device="cpu").run(None, {"latent": zq})[0]
    np.testing.assert_allclose(y_c, y_p, rtol=0, atol=5e-5)
    assert y_c.shape == (2, 3, 40, 56)


def test_the_plain_form_has_no_loop_and_unknown_forms_are_refused(vq):
    enc, _ = build_vq_graphs(vq.config, state_to_numpy(vq.state_dict()), attention="plain")
    assert "Loop" not in {n.op_type for n in enc.graph.node}
    with pytest.raises(ValueError, match="attention"):
        build_vq_graphs(vq.config, state_to_numpy(vq.state_dict()), attention="flash")
