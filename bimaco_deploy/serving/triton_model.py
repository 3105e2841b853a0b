"""The ``model.py`` of every Python-backend model of a generated repository (copied there).

Triton's Python backend loads this file in its stub process. It does one thing: read the
model's ``parameters`` from the config, put the folders of ``$BIMACO_PYTHON_PATH`` (a JSON
list, when set) first on ``sys.path`` (the stub ignores ``PYTHONPATH``; the launcher of
:mod:`bimaco_deploy.serving.server` sets it, so the server runs the very package it was
started from), and hand every call to the stage named by ``stage``
(:mod:`bimaco_deploy.serving.stages`). Nothing else lives here, so a repository never holds
a private copy of the pipeline's code.
"""

import json
import os
import sys


class TritonPythonModel:
    """Triton's entry points, delegated to :func:`bimaco_deploy.serving.stages.make_stage`."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        extra = os.environ.get("BIMACO_PYTHON_PATH")
        if extra:
            for path in reversed(json.loads(extra)):
                if path not in sys.path:
                    sys.path.insert(0, path)
        from bimaco_deploy.serving.stages import make_stage

        self.stage = make_stage(params["stage"], args, params)

    def execute(self, requests):
        return self.stage.execute(requests)

    def finalize(self):
        self.stage = None
