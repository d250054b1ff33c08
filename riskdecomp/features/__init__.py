"""Encoders and the feature cache: images -> arrays (one forward pass per image, cached by content).
"""
