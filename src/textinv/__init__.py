"""Textual Inversion experiment framework: frozen Stable Diffusion + one trainable embedding."""

__version__ = "0.1.0"
