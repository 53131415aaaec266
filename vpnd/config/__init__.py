"""Configuration: one TOML file, validated with the cloud's own limits before anything is applied."""

from vpnd.config.model import (  # noqa: F401  (the public names of the package)
    Config,
    ConfigError,
    ConnectionConfig,
    Problem,
    Secret,
    TunnelConfig,
)
