"""The sans-I/O core: frames, parsers, translators and state machines; no I/O, no clock."""
