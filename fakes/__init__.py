"""Test doubles that stand in for real components over the same interface.

`fakes.engine` answers like a vLLM OpenAI server (HTTP, same routes and messages) without a model;
`fakes.registry` writes a registry of tiny adapters the gateway accepts. Used by fast tests and
gateway benchmarks; never by the trainer or the gateway themselves.
"""
