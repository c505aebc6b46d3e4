"""Speed and scale benchmarks, run by hand: `python -m benchmarks.run --scale small|city|province`."""
