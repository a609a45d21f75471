"""gtm: a global traffic manager for multi-region LLM inference fleets.

Data flow: region agents -> Redis -> policy engine (pure) -> providers -> audit.
"""

__version__ = "0.1.0"
