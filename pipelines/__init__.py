"""ZenML pipelines: wiring only. Run one with
`zenml pipeline run pipelines.<module>.<name> -c <config>`."""
