"""Serve any model behind labalign's `Backend` as an OpenAI-compatible HTTP API."""

from labalign.serve.app import create_app
from labalign.serve.batcher import Batcher

__all__ = ["Batcher", "create_app"]
