"""Data layer: the dataset cache (``cache``), local OGBench play-data generation (``ogbench_gen``) and
single-task loading (``tasks``)."""

from .cache import data_root, fingerprint, list_datasets
from .ogbench_gen import ACTION_DIM, DOMAIN_INFO, DOMAINS, cache_key, generate_dataset, generate_episodes
from .tasks import TaskSpec, load_task_dataset, make_env, parse_task, sparse_rewards

__all__ = [
    "ACTION_DIM",
    "DOMAIN_INFO",
    "DOMAINS",
    "TaskSpec",
    "cache_key",
    "data_root",
    "fingerprint",
    "generate_dataset",
    "generate_episodes",
    "list_datasets",
    "load_task_dataset",
    "make_env",
    "parse_task",
    "sparse_rewards",
]
