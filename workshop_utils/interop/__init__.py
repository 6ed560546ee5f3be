"""Readers and writers for other tools' model formats: frozen TensorFlow graphs and Azure Custom Vision exports."""
