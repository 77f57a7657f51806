"""The training loop: train (one optimizer step as one story), scoring, the judge, evaluation,
checkpoints and the run record (results.json)."""
