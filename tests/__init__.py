"""tunneld test suite."""
