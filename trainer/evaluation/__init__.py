"""Evaluation: the same numbers in training and in production.

    metrics.py          exact match, JSON validity, ROUGE-L, BLEU of replies against references (no torch)
    scoring.py          a model in memory: eval loss, perplexity, greedy replies, exact match
    during_training.py  what a training run evaluates: periodic loss and early stopping, the final eval
    cli.py              `loraplane eval`: a served model through the gateway, over HTTP (no torch)

This package's __init__ imports nothing, so `loraplane eval` stays free of torch.
"""
