"""The vocabulary of gtm as data: pydantic models for validated inputs, frozen dataclasses for plans.

No I/O lives here.
"""
