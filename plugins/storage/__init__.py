"""Market-data store plugins (ClickHouse server, embedded chDB)."""
