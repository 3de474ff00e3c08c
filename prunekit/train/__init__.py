"""Training: the loop, callbacks, checkpoints, evaluation and the experiment builder."""

from prunekit.train.callbacks import Callback
from prunekit.train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from prunekit.train.config import RunConfig, TrainConfig
from prunekit.train.evaluate import evaluate
from prunekit.train.experiment import Experiment, build_experiment, run_experiment
from prunekit.train.loop import DivergedError, Trainer
from prunekit.train.recipe import Recipe, get_recipe, list_recipes, recipe_config
from prunekit.train.seed import seed_everything

__all__ = [
    "Callback",
    "DivergedError",
    "Experiment",
    "Recipe",
    "RunConfig",
    "TrainConfig",
    "Trainer",
    "build_experiment",
    "evaluate",
    "get_recipe",
    "list_recipes",
    "load_checkpoint",
    "read_checkpoint",
    "recipe_config",
    "run_experiment",
    "save_checkpoint",
    "seed_everything",
]
