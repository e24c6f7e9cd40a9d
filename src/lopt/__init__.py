"""lopt: learned optimizers, the pathologies of training them, and what they learn."""

__version__ = "0.1.0"
