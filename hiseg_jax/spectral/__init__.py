"""The spectral partitioner: patch features -> graph -> stage-A parts -> stage-B tree.

`config` (PartitionConfig), `graph` (adjacency, normalisation, low-rank operator), `lanczos`
and `dense_eigh` (eigensolvers), `kmeans`, `partition` (stages A and B, the entry points),
`reference` (the NumPy/SciPy oracle) and `synthetic` (planted test graphs).
"""
