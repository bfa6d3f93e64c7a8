"""ddrl: reinforcement-learning fine-tuning of masked diffusion language models.

The public API a plugin may rely on is what this package and the modules in ``PUBLIC_MODULES``
export (names without a leading underscore): the interfaces, the row-aligned state, the group
scaffold and pure losses objectives are built from, and the conformance kit ``ddrl.testing``.
ddrl's own plugin packages (plugins/) import nothing else; a test checks it.
"""

from ddrl.batch import SequenceBatch
from ddrl.config import ComponentConfig, ConfigError, RunConfig, build_config
from ddrl.estimators.base import LikelihoodEstimator, MaskedViews, TokenLogProbs, score_views
from ddrl.models.base import MaskedDiffusionPolicy, Tokenizer
from ddrl.errors import PluginContractError
from ddrl.registry import Registry, RegistryError
from ddrl.rows import RowState
from ddrl.run import assemble_run, train
from ddrl.samplers.base import Sampler, SampleOutput

__version__ = "0.1.0"

PUBLIC_MODULES = (
    "ddrl",
    "ddrl.batch",
    "ddrl.config",
    "ddrl.errors",
    "ddrl.registry",
    "ddrl.rows",
    "ddrl.models.base",
    "ddrl.samplers.base",
    "ddrl.estimators.base",
    "ddrl.estimators.masks",
    "ddrl.objectives.base",
    "ddrl.objectives.groups",
    "ddrl.objectives.ppo",
    "ddrl.objectives.denoising",
    "ddrl.objectives.path",
    "ddrl.tasks.base",
    "ddrl.rewards.base",
    "ddrl.testing",
    "ddrl.testing.fixtures",
)

__all__ = [
    "ComponentConfig",
    "ConfigError",
    "LikelihoodEstimator",
    "MaskedDiffusionPolicy",
    "MaskedViews",
    "PUBLIC_MODULES",
    "PluginContractError",
    "Registry",
    "RegistryError",
    "RowState",
    "RunConfig",
    "SampleOutput",
    "Sampler",
    "SequenceBatch",
    "TokenLogProbs",
    "Tokenizer",
    "assemble_run",
    "build_config",
    "score_views",
    "train",
]
