"""Export: the end-to-end graph (graph), the folder layout and model card (card), and the writer that builds, verifies and swaps in an export folder (writer)."""
