"""nextab: an open backend for AI code completion in editors."""

__version__ = "0.1.0"
