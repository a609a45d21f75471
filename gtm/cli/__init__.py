"""The ``gtm`` command: thin; parse, build from config, call one function."""
