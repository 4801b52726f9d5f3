"""loraplane serving: vLLM engine supervision and the OpenAI-compatible gateway.

Never imports `trainer`; the gateway process never imports torch or transformers.
"""
