"""One training loop for every method, its optimisers, schedules, checkpoints and reporters."""
