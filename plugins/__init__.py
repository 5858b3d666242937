"""First-party plugins, registered through the ``btc_quant`` entry-point group like any other."""
