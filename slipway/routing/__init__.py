"""One endpoint for many models: the models configuration, routing with fallbacks and cooldowns
to OpenAI-compatible upstreams, and usage, cost and budgets per key."""
