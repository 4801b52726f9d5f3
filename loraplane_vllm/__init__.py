"""Code that runs inside vLLM engine processes (loaded by vLLM as a plugin), not in the gateway.

It imports torch and vLLM; `serving` never imports it.
"""
