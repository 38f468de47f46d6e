"""agentkit-router: the GPU-aware LLM router (decision, GPU sampler, HTTP gateway)."""
