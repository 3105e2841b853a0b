"""Parity: does a backend reproduce the PyTorch reference? (``bimaco-deploy check``)

* :mod:`.parity`: the three levels (teacher-forced layers, whole model, SR pipeline on
  images), their thresholds and report.

It may import backends, pipeline, models and errors; nothing imports it but the cli.
"""
