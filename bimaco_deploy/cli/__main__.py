"""``python -m bimaco_deploy.cli``."""

from . import main

main()
