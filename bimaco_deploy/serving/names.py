"""The names a Triton deployment of the SR pipeline shares between the model repository, the
Python-backend stages that run inside the server and the client: one place for them.

Models (each a folder of the repository)::

    bimacosr_tiled  (BLS)   any LR image up to the configured max side: the pipeline's tiling,
                            one request to `bimacosr` per tile
    bimacosr        (ensemble) one tile: LR UINT8 [H, W, 3] (+ SEED, TILE_INDEX) -> SR UINT8 [4H, 4W, 3]
      preprocess    LR -> 4x bicubic image, the UNet's lq, the prior noise, the LR size
      vq_encoder    image -> latent                      (TensorRT / ONNX Runtime / Python)
      to_unet       latent, noise -> x = (z*scale + k*eps) / s_in, timesteps
      unet          x, timesteps, lq -> out              (TensorRT / ONNX Runtime / Python)
      from_unet     out -> latent / scale
      vq_decoder    latent -> image                      (TensorRT / ONNX Runtime / Python)
      postprocess   image, LR size -> crop, clamp, uint8 SR (and the [-1, 1] SR the tiler blends)

The three networks keep the tensor names of the exported ONNX graphs (``image``/``latent``,
``x``/``timesteps``/``lq``/``out``), so the same ensemble wiring serves engines, ONNX files
and the Python runtimes. ``to_unet`` and ``from_unet`` exist because the exported graphs are
the bare networks: the scalings between them are the pipeline's, done by its own code.
"""

from __future__ import annotations

ENSEMBLE = "bimacosr"
TILED = "bimacosr_tiled"
PREPROCESS = "preprocess"
VQ_ENCODER = "vq_encoder"
TO_UNET = "to_unet"
UNET = "unet"
FROM_UNET = "from_unet"
VQ_DECODER = "vq_decoder"
POSTPROCESS = "postprocess"

#: Every model of a repository, in data-path order.
MODELS = (TILED, ENSEMBLE, PREPROCESS, VQ_ENCODER, TO_UNET, UNET, FROM_UNET, VQ_DECODER, POSTPROCESS)
#: The three networks (the only models whose platform depends on ``--backend``).
NETWORKS = (VQ_ENCODER, UNET, VQ_DECODER)

# client-facing tensors (the ensemble's and the tiler's)
LR = "LR"  # UINT8 [H, W, 3]
SEED = "SEED"  # INT64 [1], optional (default 0)
TILE_INDEX = "TILE_INDEX"  # INT64 [1], optional (default 0): which tile's noise stream (see tile_generator)
SR = "SR"  # UINT8 [4H, 4W, 3]
SR_SIGNED = "SR_SIGNED"  # FP32 [3, 4H, 4W] in [-1, 1]: what the tiler averages

# tensors of the stages (the networks' are the ONNX graphs' names)
IMAGE = "image"
LATENT = "latent"
X = "x"
TIMESTEPS = "timesteps"
LQ = "lq"
OUT = "out"
NOISE = "noise"
LR_HW = "lr_hw"  # INT64 [2]: the LR tile's size before padding
DECODED = "decoded"
