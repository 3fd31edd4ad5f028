"""ml_collections config files (`get_config()`) for train.py and evaluate.py."""
