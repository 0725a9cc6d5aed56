"""The answer store (layer 2, stores and clients): answers, flags and API keys (SQLAlchemy + Alembic),
retention, stats and the byte-stable flag export. The retraining loop that reads the export is
``candor.retrain``."""
