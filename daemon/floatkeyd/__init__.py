"""floatkeyd: the floatkey license server and its command-line tools."""

__all__: list[str] = []
