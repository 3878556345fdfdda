"""The markets the platform serves. Each market gets its own drive partitions and asset-key prefix."""

MARKETS: tuple[str, ...] = ("de", "us", "cn", "jp")
