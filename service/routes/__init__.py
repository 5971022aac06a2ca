"""One module per endpoint family: native generation, OpenAI-compatible completions, health and metrics."""
