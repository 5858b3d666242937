"""Exchange plugins: ccxt data sources and live brokers."""
