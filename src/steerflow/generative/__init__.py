"""Generative base policies (MeanFlow, later flow matching) and latent geometries."""
