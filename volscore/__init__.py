"""volscore: score-based generative modelling from 2D images to 3D volumes."""

__version__ = "0.1.0"
