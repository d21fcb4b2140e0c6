"""The coordinator's durable state in SQL (SQLAlchemy 2 Core): SQLite by default, PostgreSQL by URL.

- `schema`       the tables (the Alembic migrations in `coordinator/migrations` create them)
- `db`           engines, SQLite pragmas (WAL), transactions, running the migrations
- `workers`, `leases`, `submissions`, `meta`: the queries, grouped by table

Every state change of a request happens in one transaction, so a refused request changes
nothing and a crash at any moment leaves either all of a request's effects or none.
"""
