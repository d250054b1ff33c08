"""riskdecomp: evaluate self-supervised encoders and explain why they are good or bad."""

__version__ = "0.1.0"
