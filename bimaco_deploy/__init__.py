"""bimaco-deploy: make binarized BiMaCoSR super-resolution models small and fast for real."""

__version__ = "0.1.0"
