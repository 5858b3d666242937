"""Real market data shipped with btc-quant (installed as the ``btc_quant.sample`` package)."""
