"""Test tools: namespace harnesses and traffic probes (not part of the product)."""
