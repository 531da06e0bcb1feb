"""Using a trained model: tiled sliding-window inference, TTA, instance post-processing."""
