"""steerflow: latent-steered (LPS) and Q-steered flow policies for offline RL, in JAX."""

__version__ = "0.1.0"

import warnings

# gymnasium warns on every OGBench env creation that float64 box bounds were cast to float32.
warnings.filterwarnings("ignore", message=r".*Box (low|high)'s precision lowered.*")

# the few-line API; named apart from the modules `steerflow.train` and `steerflow.export`
from steerflow.api import export_run, finetune, load_policy, make_env, task, train_agent  # noqa: E402
