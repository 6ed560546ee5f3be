"""Exporting a model: the end-to-end graph (graph), folder layout and model card (card), writing it (writer)."""
