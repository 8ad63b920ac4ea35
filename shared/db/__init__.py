"""ORM models and sessions."""
