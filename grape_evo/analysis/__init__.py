"""Analysis: backend-free statistics and tables over runs and studies."""
