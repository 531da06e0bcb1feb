"""What a model's output channels are: their names, the rules they follow, and how the
offset channels are stored. Every package may import it; it imports nothing of nucleiseg."""
