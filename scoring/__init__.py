"""clipmem's scoring layer: datasets, split plans, reference models f and g, CLIPMem scores, utility.

Everything that touches tensors lives here; nothing here imports the backend or the dashboard.
"""
