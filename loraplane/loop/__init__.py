"""`loraplane loop`: feedback -> train -> gate -> rollout for one adapter name, one iteration per run.

The loop is an orchestrator: it runs the trainer and the evaluator as processes (`loraplane train`,
`loraplane eval`, `loraplane feedback export`) and talks to the gateway over HTTP only; trainer and
serving still share nothing but files. Each stage is recorded in the control-plane store
(loop_iterations) so a crashed iteration resumes at the stage it stopped in. docs/loop.md.
"""
