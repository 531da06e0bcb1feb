"""From a probability map to nuclei (threshold, watershed, measurements): used by the
training metrics, tuning and prediction alike, so it sits below all of them."""
