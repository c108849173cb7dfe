"""App-side instrumentation (filled in by the instrumentation issue). Importing this package must
never import the receiver's gRPC server code, psycopg_pool, SQLAlchemy or Alembic."""
