"""The aiohttp service: scheduler port, admin port, lifecycle."""
