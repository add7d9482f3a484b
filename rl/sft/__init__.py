"""Two-stage memento SFT (`python -m rl.sft`): `train.py` runs one stage on the RL policy ranks."""
