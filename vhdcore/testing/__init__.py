"""Sample images and fault injection for tests, fuzzing and benchmarks.

Shipped (as numpy.testing is) but never imported by the runtime."""
