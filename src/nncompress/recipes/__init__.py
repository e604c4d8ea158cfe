"""Recipes: the Deep Compression pipeline and YAML schedules that compose the methods over training."""
