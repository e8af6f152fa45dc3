"""Dataset stage: readers for VeRi-776 and VehicleID, synthetic twins, fetching, verification, manifests."""
