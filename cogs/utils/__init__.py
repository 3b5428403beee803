"""Helpers the cogs share: config, buttons, job running, rendering, image checks, errors."""
