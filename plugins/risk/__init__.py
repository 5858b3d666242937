"""Pre-trade risk checks and the kill switch."""
