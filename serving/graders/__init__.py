"""Graders: score captured answers off the request path (docs/graders.md).

config.py  the `graders:` / `grading:` / `adapters:` config sections
kinds.py   the programmatic graders (json_valid, json_schema, regex, python) and building any grader
judge.py   the model grader: an LLM judge through an OpenAI-compatible URL, with a per-minute budget
queue.py   the bounded queue the gateway feeds after an answer is complete, its workers and metrics
"""
