"""The service's API layer: schemas, authentication (API keys), rate limits and errors."""
