"""The floor under everything: formats, images, labels, atomic writes, errors, runtime; imports nothing above it."""
