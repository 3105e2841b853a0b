"""Benchmarks: speed, memory and energy, always beside the float baseline in the same run.

* :mod:`.unet`: :func:`~.unet.bench_unet`, any backend's UNet interleaved with its float baseline;
* :mod:`.engine`: :func:`~.engine.bench_engine`, one TensorRT engine on its own;
* :mod:`.jetson`: JetPack/L4T release, power mode, clock state;
* :mod:`.tegrastats`: a tegrastats sampler, per-rail power and energy per image.

It may import backends, pipeline, models and errors; nothing imports it but the cli and doctor.
"""
