"""Shared test configuration. This folder is on sys.path, so `service_support` imports."""
