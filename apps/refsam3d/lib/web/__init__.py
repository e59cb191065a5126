"""The app's own web routes: the weights versions (``/model/refsam3d/versions``) and the ``/annotate/`` page."""

from .routes import install_web_routes

__all__ = ["install_web_routes"]
