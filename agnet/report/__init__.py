"""Report stage: the paper's numbers as data, Tables I–IV, figures, the claims check."""
