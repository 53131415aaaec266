"""vpnd keeps a customer gateway's dual-tunnel IPsec-VPN connection up, fast and observable."""

__version__ = "0.1.0"
