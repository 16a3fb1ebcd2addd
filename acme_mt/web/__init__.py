"""ACME over HTTP (RFC 8555): the only ACME code that knows aiohttp."""
