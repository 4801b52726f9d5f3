"""The FastAPI gateway: OpenAI-compatible API in front of vLLM engines. Never imports torch."""
