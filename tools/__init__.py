"""Project tools: reproduction of the bundled model, benchmarks and conversions."""
