"""AGNet reproducibility suite: attribute-guided vehicle re-identification (VeRi-776, VehicleID).

Importing the package is cheap (standard library only), so the Snakemake process can import
``agnet.config`` for validation without the scientific stack.
"""

__version__ = "0.1.0"
