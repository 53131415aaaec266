"""Renderings of the config: what vpnd loads into charon and FRR, and the cloud-side sheet."""
