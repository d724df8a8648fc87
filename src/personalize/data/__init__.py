"""Cohorts: the pipeline file, loading, validation and the synthetic trial simulator."""
