"""What the tests share besides fixtures (those are in tests/conftest.py): the trained
registry they are built on, the service's settings and keys, PostgreSQL databases and real
`personalize serve` processes on loopback. No tests here."""
