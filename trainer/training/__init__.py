"""Fine-tuning the two towers: settings, model, losses, batches, checkpoints and the loop."""
