"""The provider shell: aiohttp calls to LLM providers, feeding response bytes to the core."""
