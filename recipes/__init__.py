"""YAML recipes; shipped inside the package as ``ddrl.recipes`` (see pyproject.toml)."""
