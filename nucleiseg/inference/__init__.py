"""Using a trained model: tiled sliding-window inference, instance post-processing."""
