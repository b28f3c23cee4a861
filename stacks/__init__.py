"""ZenML stack definitions and their idempotent registration."""
