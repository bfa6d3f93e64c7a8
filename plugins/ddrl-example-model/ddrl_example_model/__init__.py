"""ddrl-example-model: the worked model plugin of docs/plugins.md (model `mlp`)."""

from ddrl_example_model.model import MLPConfig, MLPPolicy

__all__ = ["MLPConfig", "MLPPolicy"]
