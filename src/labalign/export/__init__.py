"""Handing a tuned model on: GGUF files for llama.cpp / LM Studio, and Ollama's Modelfile."""

from labalign.export.gguf_export import ARCHES, ExportResult, Quant, export_gguf

__all__ = ["ARCHES", "ExportResult", "Quant", "export_gguf"]
