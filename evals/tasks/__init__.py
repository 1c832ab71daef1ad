"""lm-eval task YAMLs of the domain evaluation, their hooks (utils.py) and source readers."""
