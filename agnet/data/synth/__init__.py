"""Synthetic twins of VeRi-776 and VehicleID, written in the real on-disk formats."""
