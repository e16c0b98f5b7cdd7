"""Persistence: tables, migrations and the transactions that change them."""
