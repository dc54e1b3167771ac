"""Measuring models the paper's way: throughput, largest batch, memory."""
