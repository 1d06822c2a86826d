"""The batching engine: host decode -> bucket -> resize -> pad -> compiled device step ->
results, with a prefetch thread and a data-parallel mesh (`sharding`)."""
