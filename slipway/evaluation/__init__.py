"""Answer evaluation: a QA set answered by the served bundle, in-process, through the same
``/v1/answer`` use case; deterministic answer and citation metrics, an LLM judge, and the
retrieval gate's metrics, tracked with MLflow 3's GenAI evaluation."""
