"""Strategy plugins shipped with btc-quant (examples of the SDK)."""
