"""Maintainers' tools: the sample painter (`sample`), the notebook publisher (`publish`) and the benchmark (`bench`)."""
