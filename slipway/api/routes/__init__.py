"""The API's routers: Slipway's own routes and the OpenAI-compatible ones."""
