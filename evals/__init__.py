"""Evaluation: perplexity and the domain tasks. Takes a model and a tokenizer; knows nothing of
pruning."""
