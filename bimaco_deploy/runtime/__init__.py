"""Former home of the backends, pipeline, parity and benchmarks, kept so that the entry
points users already call still import. New code imports from the rooms they moved to:

| was                              | now                                         |
|----------------------------------|---------------------------------------------|
| ``runtime.pipeline.OneStepSR``   | :class:`bimaco_deploy.pipeline.OneStepSR`   |
| ``runtime.bench.bench_unet``     | :func:`bimaco_deploy.bench.unet.bench_unet` |
| ``runtime.trt_backend.bench_engine`` (and ``python -m``) | :func:`bimaco_deploy.bench.engine.bench_engine` |
| ``runtime.tegrastats.TegrastatsSampler`` | :class:`bimaco_deploy.bench.tegrastats.TegrastatsSampler` |

Nothing inside the package imports this one.
"""
