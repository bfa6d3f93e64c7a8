"""ddrl: reinforcement-learning fine-tuning of masked diffusion language models.

The public API a plugin may rely on is what this package and its interface modules export:
``ddrl.batch``, ``ddrl.config``, ``ddrl.registry``, ``ddrl.models.base``, ``ddrl.samplers.base``,
``ddrl.estimators.base``, ``ddrl.estimators.masks``, ``ddrl.objectives.base``,
``ddrl.objectives.groups``, ``ddrl.objectives.ppo``, ``ddrl.tasks.base``, ``ddrl.rewards.base``.
"""

from ddrl.batch import SequenceBatch
from ddrl.config import ComponentConfig, ConfigError, RunConfig, build_config
from ddrl.estimators.base import LikelihoodEstimator, MaskedViews, TokenLogProbs, score_views
from ddrl.models.base import MaskedDiffusionPolicy, Tokenizer
from ddrl.registry import Registry, RegistryError
from ddrl.samplers.base import Sampler, SampleOutput

__version__ = "0.1.0"

__all__ = [
    "ComponentConfig",
    "ConfigError",
    "LikelihoodEstimator",
    "MaskedDiffusionPolicy",
    "MaskedViews",
    "Registry",
    "RegistryError",
    "RunConfig",
    "SampleOutput",
    "Sampler",
    "SequenceBatch",
    "TokenLogProbs",
    "Tokenizer",
    "build_config",
    "score_views",
]
