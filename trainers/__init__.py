"""Training for Animals-10: `python -m trainers.main --model=cnn2 ...`."""
