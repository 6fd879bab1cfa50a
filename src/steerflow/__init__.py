"""steerflow: latent-steered (LPS) and Q-steered flow policies for offline RL, in JAX."""

__version__ = "0.1.0"
