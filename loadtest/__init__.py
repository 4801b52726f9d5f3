"""Locust load tests for the OpenAI-compatible gateway: TTFT/ITL/E2E per variant, SLO gates.

Only `loadtest.user` and `loadtest.run` import locust (which monkey-patches the process with
gevent); every other module is plain Python and safe to import anywhere.
"""
