"""Broker plugins: simulated, paper, Backtrader adapter."""
