"""CLI commands, one module per topic, each with register(app)."""
