"""Configuration: one TOML file, validated with the cloud's own limits before anything is applied."""
