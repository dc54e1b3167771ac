"""Engine: the loops that run models over data (evaluation, training)."""
