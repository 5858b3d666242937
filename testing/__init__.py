"""Real servers on loopback for tests, demos and plugin authors (``btc_quant.testing``).

Nothing here is a mock: each is a real network server on 127.0.0.1 that real clients (ccxt,
clickhouse-connect) talk to over real sockets.
"""
