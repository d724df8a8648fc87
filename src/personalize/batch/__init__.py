"""Scoring referral lists: streaming on one machine, or through PySpark."""
