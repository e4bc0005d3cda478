"""Kit for crishim backend authors and crishim's own tests."""
